"""dh = dy @ w2[e]ᵀ with the SwiGLU backward in its epilogue, by a warp-specialised Gluon kernel built from the library's
loading warp, main loop and shared-memory set-up (`experts._ws_producer`, `_ws_mma`, `_ws_smem`, `03_experts`), against
the split path the library runs on Hopper (the Gluon plain product for dh, then `_act_bwd_kernel`: dh written and read
back, 1.27 ms of the graphed `small` step), at the end-to-end shapes with the routing weights folded in and their
gradient asked for (the e2e case): checks and interleaved rounds.

Measured and dropped (2026-11-29, `results/dh_gluon-2026-11-29.json`; it was in the library at commit 0b1c679 as
`PITHTRAIN_WS_DH`, where 44 GPU tests passed): dgu equal to the split path's bit for bit, drw within 1e-7, but slower —
`small` 375.5 → 388.6 µs, Qwen3 859.3 → 1023.6 — and level in the graphed `small` step (47.61 → 47.46 ms,
`results/ab_steps-wsdh{0,1}-2026-11-29.json`). A consumer's tile is 128 × 64 (the epilogue's g, u and the accumulator
must fit 232 registers: 128 × 128 spilled), and the narrower main loop costs more than the pass it saves.

    python3 benchmarks/dh_gluon.py --compile-only            # CPU: compile for sm90 (shared memory, registers, spills)
    PYTHONPATH=$PWD python3 benchmarks/dh_gluon.py --debug   # GPU: small cases first, each in its own process
    PYTHONPATH=$PWD python3 benchmarks/dh_gluon.py           # GPU: interleaved rounds; $OUT/dh_gluon.json
"""
import os, sys, json, datetime
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch, triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import tma, mbarrier, fence_async_shared
from pithtrain import experts as X
from pithtrain.experts import _ws_producer, _ws_mma, _ws_smem, _WS_CFG, _gdesc, _nprog, _tile_table

CFGS = ((64, 64, 6), (64, 64, 5), (64, 32, 10))   # (BN, BK, slots); rows per tile: experts._WS_CFG[0]

@gluon.jit
def _halves(x):
    "A (BM, BN) register tile as its column halves [:BN/2], [BN/2:] (a register split: column bit log2(BN/2) is a register's)."
    BM: gl.constexpr = x.shape[0]
    BN: gl.constexpr = x.shape[1]
    return gl.split(gl.permute(gl.reshape(x, [BM, 2, BN // 2]), [0, 2, 1]))

@gluon.jit
def _swiglu_bwd(d16, g16, u16, wr, ROWW:gl.constexpr):
    "dg, du of SwiGLU at (g, u) for dh (times the rows' weights wr with ROWW), and the rows' Σ dh·silu(g)·u (for d wr)."
    d, g, u = d16.to(gl.float32), g16.to(gl.float32), u16.to(gl.float32)
    s = 1.0 / (1.0 + gl.exp(-g))
    p = gl.sum(d * (g * s) * u, 1)
    if ROWW: d = d * wr[:, None]
    return d * u * s * (1 + g * (1 - s)), d * g * s, p

@gluon.jit
def _ws_dh_consumer(dg_d, du_d, g_d, u_d, dgu, rw, drw, table, K, I, NR, NPROG, ready, empty, done, a_bufs, b_bufs, o_bufs,
                    lbar, WHO:gl.constexpr, ROWW:gl.constexpr, DW:gl.constexpr, BM:gl.constexpr, BN:gl.constexpr,
                    BK:gl.constexpr, S:gl.constexpr):
    "One warpgroup of dh = dy @ w2[e]ᵀ with the SwiGLU backward in its epilogue: the tile's g and u fetched by TMA while"
    " it multiplies, dg and du stored through the same buffers; DW: the tile's row sums of dh·act(g, u) into drw[pn]."
    acc_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BN, 16])
    gb, ub, bar = o_bufs.index(2 * WHO), o_bufs.index(2 * WHO + 1), lbar.index(WHO)
    n_n = gl.cdiv(I, BN)
    nk = gl.cdiv(K, BK)
    m = 0
    for t in range(gl.program_id(0) + WHO * NPROG, gl.load(table) * n_n, 2 * NPROG):
        pm, pn = t // n_n, t % n_n
        row0, rend = gl.load(table + 1 + 3 * pm), gl.load(table + 2 + 3 * pm)
        tma.store_wait(0)   # the last tile's dg, du are out of the buffers: fetch this tile's g, u into them
        mbarrier.expect(bar, 2 * g_d.block_type.nbytes)
        tma.async_copy_global_to_shared(g_d, [row0, pn * BN], bar, gb)
        tma.async_copy_global_to_shared(u_d, [row0, pn * BN], bar, ub)
        acc = _ws_mma(ready, empty, done, a_bufs, b_bufs, gl.zeros([BM, BN], gl.float32, acc_l), m, (2 * m + WHO) * nk, nk, 0,
                      WHO, False, True, S)
        d2 = _halves(acc.to(dgu.dtype.element_ty))   # dh as the plain product stores it: the numbers of the split path
        mbarrier.wait(bar, m & 1)
        g2, u2 = _halves(gb.load(acc_l)), _halves(ub.load(acc_l))
        hl: gl.constexpr = g2[0].type.layout   # the epilogue works on 32-column halves (register pressure)
        rm = row0 + gl.arange(0, BM, layout=gl.SliceLayout(1, hl))
        wr = gl.load(rw + gl.minimum(rm, rend - 1)).to(gl.float32) if ROWW else None
        dg0, du0, p0 = _swiglu_bwd(d2[0], g2[0], u2[0], wr, ROWW)
        dg1, du1, p1 = _swiglu_bwd(d2[1], g2[1], u2[1], wr, ROWW)
        if DW: gl.store(drw + pn * NR + rm, p0 + p1, mask=rm < rend)
        dg = gl.reshape(gl.permute(gl.join(dg0.to(dgu.dtype.element_ty), dg1.to(dgu.dtype.element_ty)), [0, 2, 1]), [BM, BN])
        du = gl.reshape(gl.permute(gl.join(du0.to(dgu.dtype.element_ty), du1.to(dgu.dtype.element_ty)), [0, 2, 1]), [BM, BN])
        if row0 + BM <= rend:   # a whole tile of this expert's rows: two TMA stores
            gb.store(dg)
            ub.store(du)
            fence_async_shared()
            tma.async_copy_shared_to_global(dg_d, [row0, pn * BN], gb)
            tma.async_copy_shared_to_global(du_d, [row0, pn * BN], ub)
        else:
            ol: gl.constexpr = dg.type.layout
            ro = row0 + gl.arange(0, BM, layout=gl.SliceLayout(1, ol))
            rn = pn * BN + gl.arange(0, BN, layout=gl.SliceLayout(0, ol))
            msk = (ro < rend)[:, None] & (rn < I)[None, :]
            p = dgu + ro.to(gl.int64)[:, None] * (2 * I) + rn[None, :]
            gl.store(p, dg, mask=msk)
            gl.store(p + I, du, mask=msk)
        m += 1
    tma.store_wait(0)

@gluon.jit
def _dh_ws_kernel(a_d, w_d, g_d, u_d, dg_d, du_d, dgu, rw, drw, table, K, I, NR, NPROG, ROWW:gl.constexpr, DW:gl.constexpr,
                  BM:gl.constexpr, BN:gl.constexpr, BK:gl.constexpr, S:gl.constexpr):
    "dgu = SwiGLU backward at gu of (rw ·) dy @ w2[e]ᵀ over the table's row tiles of BN columns of h; DW: drw[pn, row] partials."
    a_bufs, b_bufs, o_bufs, ready, empty, done = _ws_smem(a_d, w_d, g_d, BN, BK, 4, S)
    lbar = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())   # each consumer's g, u fetch
    for s in gl.static_range(2): mbarrier.init(lbar.index(s), count=1)
    gl.warp_specialize([(_ws_dh_consumer, (dg_d, du_d, g_d, u_d, dgu, rw, drw, table, K, I, NR, NPROG, ready, empty, done,
                                           a_bufs, b_bufs, o_bufs, lbar, 0, ROWW, DW, BM, BN, BK, S)),
                        (_ws_dh_consumer, (dg_d, du_d, g_d, u_d, dgu, rw, drw, table, K, I, NR, NPROG, ready, empty, done,
                                           a_bufs, b_bufs, o_bufs, lbar, 1, ROWW, DW, BM, BN, BK, S)),
                        (_ws_producer, (a_d, w_d, table, K, I, NPROG, ready, empty, a_bufs, b_bufs, True, False, BM, BN, BK, S))],
                       [4, 1], [232, 40])

def dgu_ws(dy, offs, w2c, gu, dgu, rw=None, need_drw=False, table=None, cfg=CFGS[0]):
    "`experts._dgu`'s SwiGLU case by `_dh_ws_kernel`: dh never leaves the kernel; drw summed from (column tiles, N) partials."
    BM, (BN, BK, S) = _WS_CFG[0], cfg
    (N, H), I = dy.shape, gu.shape[1] // 2
    part = torch.empty(triton.cdiv(I, BN), N, device=dy.device, dtype=torch.float32) if need_drw else None
    n = _nprog(dy.device)
    _dh_ws_kernel[(n,)](_gdesc(dy, [BM, BK]), _gdesc(w2c.view(-1, H), [BN, BK]), _gdesc(gu[:, :I], [BM, BN]),
                        _gdesc(gu[:, I:], [BM, BN]), _gdesc(dgu[:, :I], [BM, BN]), _gdesc(dgu[:, I:], [BM, BN]), dgu, rw if rw is not None else dgu,
                        part if need_drw else dgu, table if table is not None else _tile_table(offs, N, BM), H, I, N, n,
                        ROWW=rw is not None, DW=need_drw, BM=BM, BN=BN, BK=BK, S=S, num_warps=4, maxnreg=168)
    return dgu, part.sum(0) if need_drw else None


def operands(T, k, E, H, I, seed=0):
    "A plan's offsets and bf16 dy (N, H), w2 (E, I, H), gu (N, 2I), fp32 row weights (N,)."
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from experts_sweep import routing
    plan, offs = routing(T, k, E)
    N = plan.token_idx.numel()
    g = torch.Generator(device='cuda').manual_seed(seed)
    r = lambda *s: torch.randn(*s, device='cuda', generator=g)
    return offs, r(N, H).bfloat16(), (r(E, I, H) / H**0.5).bfloat16(), (2 * r(N, 2 * I)).bfloat16(), torch.rand(N, device='cuda', generator=g)

def split(dy, offs, w2, gu, rw, table, ws=True):
    "`_dgu` as the library runs it: dh by a plain product (the Gluon one with ws, else `_pmm`), then `_act_bwd_kernel`."
    was, X._WS = X._WS, ('always' if ws else '0')
    try: return X._dgu(dy, offs, w2, gu, False, False, 1.0, 0.0, rw, True, table)
    finally: X._WS = was

def fused(dy, offs, w2, gu, rw, table, cfg=CFGS[0]):
    return dgu_ws(dy, offs, w2, gu, torch.empty_like(gu), rw, True, table, cfg)

def rel(x, y): return ((x.double() - y.double()).norm() / y.double().norm()).item()

def compile_only():
    "Compile every configuration for sm90 on this machine: shared memory, registers and spills (ptxas -v)."
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from experts_sweep import bf16_desc as d, sm90_report
    BM = X._WS_CFG[0]
    for BN, BK, S in CFGS:
        for roww in (False, True):
            sig = dict(a_d=d([BM, BK]), w_d=d([BN, BK]), g_d=d([BM, BN]), u_d=d([BM, BN]), dg_d=d([BM, BN]), du_d=d([BM, BN]),
                       dgu='*bf16', rw='*fp32', drw='*fp32', table='*i32', K='i32', I='i32', NR='i32', NPROG='i32', ROWW='constexpr',
                       DW='constexpr', BM='constexpr', BN='constexpr', BK='constexpr', S='constexpr')
            sm90_report(_dh_ws_kernel, sig, dict(ROWW=roww, DW=roww, BM=BM, BN=BN, BK=BK, S=S), (BN, BK, S), 'ROWW+DW', roww)

def case(name):
    "One debugging case in its own process: `tiny` (experts of 0, 1, 200, 130, 33 rows; I 96) or `small` (the e2e shape)."
    if name.startswith('tiny'):
        rows, H, I = [0, 1, 200, 130, 33], 128, 96
        offs = torch.tensor([0] + rows, device='cuda').cumsum(0).to(torch.int32)
        g = torch.Generator(device='cuda').manual_seed(0)
        N, E = sum(rows), len(rows)
        dy, w2 = torch.randn(N, H, device='cuda', generator=g).bfloat16(), (torch.randn(E, I, H, device='cuda', generator=g) / H**0.5).bfloat16()
        gu, rw = (2 * torch.randn(N, 2 * I, device='cuda', generator=g)).bfloat16(), torch.rand(N, device='cuda', generator=g)
    else: offs, dy, w2, gu, rw = operands(16384, 8, 64, 1024, 512)
    rw = rw if name.endswith('rw') else None
    table = X._tile_table(offs, dy.shape[0], X._WS_CFG[0])
    ref, drw_ref = split(dy, offs, w2, gu, rw, table, ws=False)
    out, drw = dgu_ws(dy, offs, w2, gu, torch.full_like(gu, float('nan')), rw, True, table)
    torch.cuda.synchronize()
    print(name, 'dgu rel err', rel(out, ref), 'nan', out.isnan().sum().item(), 'drw rel err', rel(drw, drw_ref))

def debug():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from experts_sweep import isolated_cases
    isolated_cases(__file__, ('tiny', 'tiny-rw', 'small', 'small-rw'))

def main(rounds=5):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from experts_sweep import SHAPES, interleaved_rows
    res = dict(date=datetime.date.today().isoformat(), device=torch.cuda.get_device_name(),
               command='python3 benchmarks/dh_gluon.py ' + ' '.join(sys.argv[1:]), rows=[])
    out = os.environ.get('OUT')
    for sname, (T, k, E, H, I) in SHAPES.items():
        offs, dy, w2, gu, rw = operands(T, k, E, H, I)
        table = X._tile_table(offs, dy.shape[0], X._WS_CFG[0])
        ref, drw_ref = split(dy, offs, w2, gu, rw, table)
        fns = {'split (Gluon dh + _act_bwd)': lambda: split(dy, offs, w2, gu, rw, table)}
        for cfg in CFGS:
            o, drw = fused(dy, offs, w2, gu, rw, table, cfg); torch.cuda.synchronize()
            res['rows'].append(dict(shape=sname, cfg=cfg, err_dgu=rel(o, ref), err_drw=rel(drw, drw_ref))); print(res['rows'][-1], flush=True)
            fns[f'fused {cfg}'] = lambda cfg=cfg: fused(dy, offs, w2, gu, rw, table, cfg)
        res['rows'] += interleaved_rows(fns, rounds, rep=30, shape=sname)
        if out: json.dump(res, open(os.path.join(out, 'dh_gluon.json'), 'w'), indent=1)

if __name__ == '__main__':
    if '--compile-only' in sys.argv: compile_only()
    elif '--case' in sys.argv: case(sys.argv[sys.argv.index('--case') + 1])
    elif '--debug' in sys.argv: debug()
    else: main()
