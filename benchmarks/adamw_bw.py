"""How close is the AdamW pass (`optim._adamw_kernel`, 30 bytes per parameter) to the memory's bandwidth?

Times, at one `small` layer's expert weights (100.7 M fp32 parameters), the library kernel at several (BLOCK,
warps) and a variant with streaming cache hints (loads `evict_first`, stores `.cs`), against two ceilings measured in
the same process: torch's copy of a 1.6 GB fp32 tensor (read + write) and a Triton copy of four fp32 streams into
three plus a bf16 one (the update's traffic without its arithmetic). TB/s = bytes moved / time.

    PYTHONPATH=$PWD python3 benchmarks/adamw_bw.py                 # GPU; $OUT/adamw_bw.json
    TRITON_INTERPRET=1 python3 benchmarks/adamw_bw.py --cpu-smoke  # CPU: the variants equal the library kernel
"""
import os, sys, json, datetime
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch, triton, triton.language as tl
from pithtrain import optim as O
from adamw_sm_share import HP, state, timed

@triton.jit
def _adamw_cs(p_ptr, g_ptr, m_ptr, v_ptr, c_ptr, n, decay, step_size, b1, b2, eps, bc2_sqrt, BLOCK:tl.constexpr, MATH:tl.constexpr):
    "The update with streaming hints (MATH false: the same loads and stores, no arithmetic: the traffic's ceiling)."
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    g = tl.load(g_ptr + offs, mask=ok, other=0.0, eviction_policy='evict_first')
    m = tl.load(m_ptr + offs, mask=ok, other=0.0, eviction_policy='evict_first')
    v = tl.load(v_ptr + offs, mask=ok, other=0.0, eviction_policy='evict_first')
    p = tl.load(p_ptr + offs, mask=ok, other=0.0, eviction_policy='evict_first')
    if MATH:
        m = m + (1.0 - b1) * (g - m)
        v = b2 * v + (1.0 - b2) * g * g
        p = p * decay - step_size * tl.div_rn(m, tl.div_rn(tl.sqrt_rn(v), bc2_sqrt) + eps)
    else:
        m, v, p = m + g, v + g, p + g
    tl.store(m_ptr + offs, m, mask=ok, cache_modifier='.cs')
    tl.store(v_ptr + offs, v, mask=ok, cache_modifier='.cs')
    tl.store(p_ptr + offs, p, mask=ok, cache_modifier='.cs')
    tl.store(c_ptr + offs, p.to(c_ptr.dtype.element_ty), mask=ok, cache_modifier='.cs')

@triton.jit
def _adamw_mv(p_ptr, g_ptr, mv_ptr, c_ptr, n, decay, step_size, b1, b2, eps, bc2_sqrt, BLOCK:tl.constexpr):
    "The update with the two moments interleaved in one (n, 2) buffer: three read and three write streams, not four."
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    flat = tl.program_id(0).to(tl.int64) * 2 * BLOCK + tl.arange(0, 2 * BLOCK)   # (m, v) pairs, read as one contiguous run
    g = tl.load(g_ptr + offs, mask=ok, other=0.0)
    m, v = tl.split(tl.reshape(tl.load(mv_ptr + flat, mask=flat < 2 * n, other=0.0), (BLOCK, 2)))
    p = tl.load(p_ptr + offs, mask=ok, other=0.0)
    m = m + (1.0 - b1) * (g - m)
    v = b2 * v + (1.0 - b2) * g * g
    p = p * decay - step_size * tl.div_rn(m, tl.div_rn(tl.sqrt_rn(v), bc2_sqrt) + eps)
    tl.store(mv_ptr + flat, tl.reshape(tl.join(m, v), (2 * BLOCK,)), mask=flat < 2 * n)
    tl.store(p_ptr + offs, p, mask=ok)
    tl.store(c_ptr + offs, p.to(c_ptr.dtype.element_ty), mask=ok)

@triton.jit
def _copy_streams(src, dst, n, S:tl.constexpr, BLOCK:tl.constexpr):
    "S fp32 streams in, S out (stream i is the i-th n-element slice): does the number of streams cost bandwidth?"
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    for i in tl.static_range(S):
        tl.store(dst + i * n + offs, tl.load(src + i * n + offs, mask=ok) + 1.0, mask=ok)

def mv(st, mvbuf, block, warps):
    w, g, _, _, c = st
    _adamw_mv[(triton.cdiv(w.numel(), block),)](w, g, mvbuf, c, w.numel(), *HP, BLOCK=block, num_warps=warps)

def lib(st, block, warps):
    w, g, m, v, c = st
    O._adamw_kernel[(triton.cdiv(w.numel(), block),)](w, g, m, v, c, w, w.numel(), *HP, 0, HAS_GS=False, COPY=True, SR=False,
                                                     BLOCK=block, num_warps=warps)

def cs(st, block, warps, math=True):
    w, g, m, v, c = st
    _adamw_cs[(triton.cdiv(w.numel(), block),)](w, g, m, v, c, w.numel(), *HP, BLOCK=block, MATH=math, num_warps=warps)

def smoke():
    a = state(5000, 'cpu'); b = [t.clone() for t in a]; c = [t.clone() for t in a]
    lib(a, 1024, 4); cs(b, 512, 4)
    for x, y in zip(a, b): assert torch.equal(x, y)
    mvbuf = torch.stack([c[2], c[3]], 1).contiguous(); mv(c, mvbuf, 1024, 4)
    for x, y in zip(a, [c[0], c[1], mvbuf[:, 0], mvbuf[:, 1], c[4]]): assert torch.equal(x, y)
    print('streaming-hint and interleaved-moment variants equal the library kernel')

def main():
    n = 100_663_296
    st = state(n, 'cuda')
    res = dict(date=datetime.date.today().isoformat(), device=torch.cuda.get_device_name(),
               command='python3 benchmarks/adamw_bw.py ' + ' '.join(sys.argv[1:]), params=n, rows=[])
    def row(name, fn, nbytes):
        fn(); t = timed(fn, reps=9)
        res['rows'].append(dict(name=name, us=round(t, 1), tb_s=round(nbytes / t / 1e6, 3))); print(res['rows'][-1], flush=True)
    src, dst = torch.randn(4 * n, device='cuda'), torch.empty(4 * n, device='cuda')
    row('torch copy_ fp32 (ceiling: 1 read + 1 write stream)', lambda: dst.copy_(src), 8 * 4 * n)
    del src, dst
    for block, warps in ((1024, 4), (2048, 4), (2048, 8), (4096, 8), (512, 4), (1024, 8)):
        row(f'library block {block} warps {warps}', lambda: lib(st, block, warps), 30 * n)
    for block, warps in ((1024, 4), (2048, 8)):
        row(f'streaming hints block {block} warps {warps}', lambda: cs(st, block, warps), 30 * n)
        row(f'no arithmetic, hints, block {block} warps {warps}', lambda: cs(st, block, warps, False), 30 * n)
    if '--mv' in sys.argv:   # 2026-11-30: interleaved moments, and copies of 1-4 streams each way at the same bytes
        mvbuf = torch.stack([st[2], st[3]], 1).contiguous()
        for r in range(2):
            row(f'library block 1024 warps 4 (round {r})', lambda: lib(st, 1024, 4), 30 * n)
            for block, warps in ((1024, 4), (512, 4), (2048, 8)):
                row(f'interleaved moments block {block} warps {warps} (round {r})', lambda: mv(st, mvbuf, block, warps), 30 * n)
        del mvbuf, st; torch.cuda.empty_cache()
        src, dst = torch.randn(4 * n, device='cuda'), torch.empty(4 * n, device='cuda')
        for S in (1, 2, 3, 4):
            k = 4 * n // S
            row(f'copy {S} stream(s) each way, block 1024', lambda: _copy_streams[(triton.cdiv(k, 1024),)](src, dst, k, S=S, BLOCK=1024), 8 * 4 * n)
    out = os.environ.get('OUT')
    tag = os.environ.get('TAG', '')
    if out: json.dump(res, open(os.path.join(out, f'adamw_bw{tag}.json'), 'w'), indent=1)

if __name__ == '__main__': smoke() if '--cpu-smoke' in sys.argv else main()
