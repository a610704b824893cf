"""Prepared, not yet run on a GPU: the row gather out[i] = x[tok[i]] through TMA — one box of one row per (row,
column block) into shared memory, then the whole (BR, BH) tile stored by one TMA store — against the library's pointer
kernel (`dispatch._gather_kernel`, 16 × 256 tiles) and wider pointer tiles, at the end-to-end shapes (16384 tokens,
k 8: N = 131072 rows of H 1024 and 2048, bf16), interleaved rounds.

Why: the gather writes 268 MB a `small` layer at ≈ 3.3 TB/s (90 µs; the combine and the SwiGLU backward, which mostly
read, run at 3.9–4.2), 0.72 ms of the `small` step. A TMA store moves a whole tile with one instruction and no
register traffic. Second question, for a later fusion: how fast can one thread issue one-row TMA loads (BR of them a
tile)? fc1 and the weight gradient of w1 read the gathered rows; if one-row boxes keep up, they could read x itself
and the gathered copy (and this kernel) would go. The boxes here are unswizzled (a row is BH · 2 contiguous bytes in
the tile), which a plain copy allows; an MMA operand would need the 128-byte swizzle (rows of 64 bf16).

    python3 benchmarks/gather_tma.py --compile-only        # CPU: compile for sm90 (shared memory, registers)
    PYTHONPATH=$PWD python3 benchmarks/gather_tma.py       # GPU: checks (bit for bit against x[tok]), rounds; $OUT/gather_tma.json
"""
import os, sys, json, datetime
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch, triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import tma, mbarrier
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

CFGS = ((64, 256, 1), (32, 256, 1), (128, 128, 1), (64, 256, 4))   # (BR rows, BH columns ≤ 256: a TMA box, warps)
PTR = ((16, 256, 4), (32, 256, 4), (32, 128, 4), (64, 128, 8), (64, 256, 8))   # pointer kernel tiles (BLOCK_R, BLOCK_H, warps)

@gluon.jit
def _gather_tma_kernel(x_d, o_d, tok, N, BR:gl.constexpr, BH:gl.constexpr):
    "Tile (pid 0: BR rows, pid 1: BH columns) of out = x[tok]: BR one-row TMA loads on one barrier, one TMA store."
    r0, c0 = gl.program_id(0) * BR, gl.program_id(1) * BH
    buf = gl.allocate_shared_memory(o_d.dtype, [BR, BH], o_d.layout)
    bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(bar, count=1)
    mbarrier.expect(bar, BR * BH * 2)   # a row past N loads row 0 (its store is clipped): every box counts
    for r in gl.static_range(BR):
        t = gl.load(tok + gl.minimum(r0 + r, N - 1))
        tma.async_copy_global_to_shared(x_d, [t.to(gl.int32), c0], bar, buf.slice(r, 1))
    mbarrier.wait(bar, 0)
    mbarrier.invalidate(bar)
    tma.async_copy_shared_to_global(o_d, [r0, c0], buf)   # rows ≥ N fall outside the descriptor: not written
    tma.store_wait(0)

def _layout(): return gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=16, rank=2)

def gather_tma(x, tok, out, cfg=CFGS[0]):
    "out = x[tok] (bf16, contiguous rows, H a multiple of 8) by `_gather_tma_kernel`."
    BR, BH, nw = cfg
    N, H = out.shape
    x_d = TensorDescriptor.from_tensor(x, [1, BH], _layout())
    o_d = TensorDescriptor.from_tensor(out, [BR, BH], _layout())
    _gather_tma_kernel[(triton.cdiv(N, BR), triton.cdiv(H, BH))](x_d, o_d, tok, N, BR=BR, BH=BH, num_warps=nw)
    return out

def compile_only():
    "Compile each configuration for sm90 on this machine: shared memory, registers, spills (`experts_sweep.sm90_report`)."
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from experts_sweep import sm90_report
    d = lambda shape: f"tensordesc<bf16[{shape[0]}, {shape[1]}], {_layout()!r}>"
    for BR, BH, nw in CFGS:
        sig = dict(x_d=d([1, BH]), o_d=d([BR, BH]), tok='*i64', N='i32', BR='constexpr', BH='constexpr')
        sm90_report(_gather_tma_kernel, sig, dict(BR=BR, BH=BH), 'gather_tma BR, BH =', (BR, BH), '(compiled at 4 warps)')

def main(rounds=5):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from experts_sweep import interleaved_rows
    from pithtrain.dispatch import _gather_kernel, _gather_fwd
    res = dict(date=datetime.date.today().isoformat(), device=torch.cuda.get_device_name(),
               command='python3 benchmarks/gather_tma.py ' + ' '.join(sys.argv[1:]), rows=[])
    out_dir = os.environ.get('OUT')
    for T, H in ((16384, 1024), (16384, 2048)):
        torch.manual_seed(0)
        N = 8 * T
        x = torch.randn(T, H, device='cuda', dtype=torch.bfloat16)
        tok = torch.randint(0, T, (N,), device='cuda')
        ref, out = x[tok], torch.empty(N, H, device='cuda', dtype=torch.bfloat16)
        fns = {'library _gather_fwd': lambda: _gather_fwd(x, tok, None)}
        for br, bh, nw in PTR:
            fns[f'pointer {br}x{bh} w{nw}'] = lambda br=br, bh=bh, nw=nw: _gather_kernel[(triton.cdiv(N, br), triton.cdiv(H, bh))](
                x, tok, tok, out, N, H, HAS_VALID=False, BLOCK_R=br, BLOCK_H=bh, num_warps=nw)
        for cfg in CFGS:
            o = gather_tma(x, tok, torch.full_like(ref, float('nan')), cfg); torch.cuda.synchronize()
            res['rows'].append(dict(T=T, H=H, cfg=cfg, equal=bool(torch.equal(o, ref)))); print(res['rows'][-1], flush=True)
            fns[f'tma {cfg}'] = lambda cfg=cfg: gather_tma(x, tok, out, cfg)
        for n, f in fns.items():   # every variant checked, TMA ones above
            if n.startswith('pointer'): out.fill_(float('nan')); f(); torch.cuda.synchronize(); assert torch.equal(out, ref), n
        rows = interleaved_rows(fns, rounds, rep=40, T=T, H=H)
        for r in rows: r['tb_per_s'] = round((N * H * 2 + T * H * 2) / r['us_median'] / 1e6, 2)   # written + x read once
        res['rows'] += rows
        if out_dir: json.dump(res, open(os.path.join(out_dir, 'gather_tma.json'), 'w'), indent=1)

if __name__ == '__main__':
    if '--compile-only' in sys.argv: compile_only()
    else: main()
