"""Prepared, not yet run on a GPU: the plain expert products with the two consumer warpgroups on *one* slot, each
multiplying the shared A tile (128 rows × BK) by its own half of a 2·BN-wide B tile (cooperative, column halves),
against the library's ping-pong kernel (`experts._pmm_ws_kernel`: each consumer its own 128 × 128 tile, alternate
turns), at the end-to-end shapes: checks, interleaved rounds.

Why: a ping-pong slot carries 32 KB (A 128 × 64 + B 64 × 128) for 1 M multiply-adds; a cooperative slot 48 KB (A + B
64 × 256) for 2 M, so the loads from L2 per product fall by a quarter. cuBLAS's kernels at these shapes use 256-wide
tiles and 2-CTA clusters (round 10: ≈ 730 TFLOP/s against ≈ 650 for `_pmm_ws_kernel`; Gluon 3.6 has no TMA
multicast). The price: both consumers finish a tile together, so its epilogue (half-width TMA stores, as
`experts._WS_CS = 2`) no longer hides behind the other's products — the loading warp fills the ring meanwhile.
Shared memory: 4 slots × 48 KB + 2 × 16 KB output buffers = 224 KB. A slot is free when both consumers have
multiplied from it (`empty` counts two arrivals). Outputs must equal `_pmm_ws`'s bit for bit (same k order, fp32
accumulation); rows come from the library's tile table (128-row tiles of an expert), columns in pairs of BN.

    python3 benchmarks/pmm_coop.py --compile-only            # CPU: compile for sm90 (shared memory, registers, spills)
    PYTHONPATH=$PWD python3 benchmarks/pmm_coop.py --debug   # GPU: small cases first, each in its own process
    PYTHONPATH=$PWD python3 benchmarks/pmm_coop.py           # GPU: against _pmm_ws, interleaved rounds; $OUT/pmm_coop.json
"""
import os, sys, json, datetime
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import tma, mbarrier, fence_async_shared, warpgroup_mma, warpgroup_mma_wait
from pithtrain import experts as X

CFGS = ((128, 128, 64, 4),)   # (BM, BN, BK, slots): BN columns a consumer, 2·BN a slot's B tile

@gluon.jit
def _coop_consumer(c_d, c, table, K, NO, sc_m, NPROG, ready, empty, a_bufs, b_bufs, c_bufs, WHO:gl.constexpr, TW:gl.constexpr,
                   BM:gl.constexpr, BN:gl.constexpr, BK:gl.constexpr, S:gl.constexpr):
    "One warpgroup: of every tile of this program, columns WHO·BN … of the pair, from every slot (no turns), stored in two"
    " column halves through c_bufs[WHO] (whole row tiles) or masked (an expert's last)."
    acc_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BN, 16])
    c_buf = c_bufs.index(WHO)
    n_p = gl.cdiv(NO, 2 * BN)
    nk = gl.cdiv(K, BK)
    cnt = 0
    for t in range(gl.program_id(0), gl.load(table) * n_p, NPROG):
        pm, pp = t // n_p, t % n_p
        row0, rend = gl.load(table + 1 + 3 * pm), gl.load(table + 2 + 3 * pm)
        col0 = pp * 2 * BN + WHO * BN
        acc = gl.zeros([BM, BN], gl.float32, acc_l)
        for k in range(nk):
            s = cnt % S
            mbarrier.wait(ready.index(s), (cnt // S) & 1)
            if TW: b = b_bufs.index(s).slice(WHO * BN, BN, 0).permute((1, 0))
            else: b = b_bufs.index(s).slice(WHO * BN, BN, 1)
            acc = warpgroup_mma(a_bufs.index(s), b, acc, use_acc=k > 0, is_async=True)
            acc = warpgroup_mma_wait(1, deps=(acc,))   # the previous k-step's product is done: this consumer frees its slot
            mbarrier.arrive(empty.index((cnt + S - 1) % S), pred=k > 0)
            cnt += 1
        acc = warpgroup_mma_wait(0, deps=(acc,))
        mbarrier.arrive(empty.index((cnt + S - 1) % S), pred=nk > 0)
        out = acc.to(c.dtype.element_ty)
        if row0 + BM <= rend:   # a whole row tile: two TMA stores of column halves through the half-width buffer
            x, y = gl.split(gl.permute(gl.reshape(out, [BM, 2, BN // 2]), [0, 2, 1]))
            tma.store_wait(0)
            c_buf.store(x)
            fence_async_shared()
            tma.async_copy_shared_to_global(c_d, [row0, col0], c_buf)
            tma.store_wait(0)
            c_buf.store(y)
            fence_async_shared()
            tma.async_copy_shared_to_global(c_d, [row0, col0 + BN // 2], c_buf)
        else:
            rm = row0 + gl.arange(0, BM, layout=gl.SliceLayout(1, acc_l))
            rn = col0 + gl.arange(0, BN, layout=gl.SliceLayout(0, acc_l))
            gl.store(c + rm.to(gl.int64)[:, None] * sc_m + rn[None, :], out, mask=(rm < rend)[:, None] & (rn < NO)[None, :])
    tma.store_wait(0)

@gluon.jit
def _pmm_coop_kernel(a_d, w_d, c_d, c, table, K, NO, sc_m, NPROG, TW:gl.constexpr, BM:gl.constexpr, BN:gl.constexpr,
                     BK:gl.constexpr, S:gl.constexpr):
    "c[rows of e] = a[rows of e] @ w[e] (w[e]ᵀ with TW): a loading warp, two consumer warpgroups on each slot."
    a_bufs = gl.allocate_shared_memory(a_d.dtype, [S] + a_d.block_type.shape, a_d.layout)
    b_bufs = gl.allocate_shared_memory(w_d.dtype, [S] + w_d.block_type.shape, w_d.layout)
    c_bufs = gl.allocate_shared_memory(c_d.dtype, [2] + c_d.block_type.shape, c_d.layout)
    ready = gl.allocate_shared_memory(gl.int64, [S, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [S, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(S):
        mbarrier.init(ready.index(s), count=1)
        mbarrier.init(empty.index(s), count=2)   # both consumers
    gl.warp_specialize([(_coop_consumer, (c_d, c, table, K, NO, sc_m, NPROG, ready, empty, a_bufs, b_bufs, c_bufs, 0, TW, BM, BN,
                                          BK, S)),
                        (_coop_consumer, (c_d, c, table, K, NO, sc_m, NPROG, ready, empty, a_bufs, b_bufs, c_bufs, 1, TW, BM, BN,
                                          BK, S)),
                        # the library's loading warp with 2·BN-wide B boxes: tile t is (row tile, column pair), its box at pair·2BN
                        (X._ws_producer, (a_d, w_d, table, K, NO, NPROG, ready, empty, a_bufs, b_bufs, TW, False, BM, 2 * BN, BK, S))],
                       [4, 1], [232, 40])

def pmm_coop(a, offs, w, c, K, NO, tw, table=None, cfg=CFGS[0]):
    "As `experts._pmm_ws(a, offs, w, c, K, NO, tw)`, by `_pmm_coop_kernel`."
    BM, BN, BK, S = cfg
    n = X._nprog(c.device)
    _pmm_coop_kernel[(n,)](X._gdesc(a, [BM, BK]), X._gdesc(w.view(-1, w.shape[-1]), [2 * BN, BK] if tw else [BK, 2 * BN]),
                           X._gdesc(c, [BM, BN // 2]), c, table if table is not None else X._tile_table(offs, c.shape[0], BM), K, NO,
                           c.stride(0), n, TW=tw, BM=BM, BN=BN, BK=BK, S=S, num_warps=4, maxnreg=168)
    return c

def compile_only():
    "Compile every configuration for sm90 on this machine: shared memory, registers and spills (ptxas -v)."
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from experts_sweep import bf16_desc as d, sm90_report
    for BM, BN, BK, S in CFGS:
        for tw in (False, True):
            sig = dict(a_d=d([BM, BK]), w_d=d([2 * BN, BK] if tw else [BK, 2 * BN]), c_d=d([BM, BN // 2]), c='*bf16', table='*i32',
                       K='i32', NO='i32', sc_m='i32', NPROG='i32', TW='constexpr', BM='constexpr', BN='constexpr', BK='constexpr',
                       S='constexpr')
            sm90_report(_pmm_coop_kernel, sig, dict(TW=tw, BM=BM, BN=BN, BK=BK, S=S), (BM, BN, BK, S), 'tw', tw)

def rel(x, y): return ((x.float() - y.float()).norm() / y.float().norm()).item()

def case(name):
    "One debugging case in its own process: `tiny-{tw,notw}` (experts of 0, 1, 200, 130, 33 rows; NO 136, K 192) or"
    " `small-{tw,notw}` (fc2's shape)."
    torch.manual_seed(0)
    tw = name.endswith('-tw')
    if name.startswith('tiny'):
        rows, K, NO = [0, 1, 200, 130, 33], 192, 136
        offs = torch.tensor([0] + rows, device='cuda').cumsum(0).to(torch.int32)
    else:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from experts_sweep import routing
        _, offs = routing(16384, 8, 64); K, NO = 512, 1024
    N, E = int(offs[-1]), offs.numel() - 1
    a = torch.randn(N, K, device='cuda', dtype=torch.bfloat16)
    w = torch.randn(E, NO, K, device='cuda', dtype=torch.bfloat16) if tw else torch.randn(E, K, NO, device='cuda', dtype=torch.bfloat16)
    ref = X._pmm_ws(a, offs, w, torch.empty(N, NO, device='cuda', dtype=torch.bfloat16), K, NO, tw)
    c = pmm_coop(a, offs, w, torch.full((N, NO), float('nan'), device='cuda', dtype=torch.bfloat16), K, NO, tw)
    torch.cuda.synchronize()
    print(name, 'rel err', rel(c, ref), 'equal', torch.equal(c, ref), 'nan', c.isnan().sum().item(), flush=True)

def debug():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from experts_sweep import isolated_cases
    isolated_cases(__file__, ('tiny-notw', 'tiny-tw', 'small-notw', 'small-tw'), tail=1500, tail_err=1200)

def main(rounds=5):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from experts_sweep import plain_products, SHAPES, interleaved_rows
    res = dict(date=datetime.date.today().isoformat(), device=torch.cuda.get_device_name(),
               command='python3 benchmarks/pmm_coop.py ' + ' '.join(sys.argv[1:]), rows=[])
    out = os.environ.get('OUT')
    for sname, (T, k, E, H, I) in SHAPES.items():
        offs, N, prods = plain_products(T, k, E, H, I)
        for what, a, w, K, NO, tw in prods:
            table = X._tile_table(offs, N, X._WS_CFG[0])
            ref = X._pmm_ws(a, offs, w, torch.empty(N, NO, device='cuda', dtype=a.dtype), K, NO, tw, table)
            c = torch.empty_like(ref)
            fns = {'_pmm_ws': lambda: X._pmm_ws(a, offs, w, c, K, NO, tw, table)}
            for cfg in CFGS:
                o = pmm_coop(a, offs, w, torch.full_like(ref, float('nan')), K, NO, tw, table, cfg); torch.cuda.synchronize()
                res['rows'].append(dict(shape=sname, gemm=what, cfg=cfg, equal=bool(torch.equal(o, ref)), rel_err=rel(o, ref)))
                print(res['rows'][-1], flush=True)
                fns[f'coop {cfg}'] = lambda cfg=cfg: pmm_coop(a, offs, w, c, K, NO, tw, table, cfg)
            res['rows'] += interleaved_rows(fns, rounds, rep=30, flop=2 * N * K * NO, shape=sname, gemm=what)
            if out: json.dump(res, open(os.path.join(out, 'pmm_coop.json'), 'w'), indent=1)

if __name__ == '__main__':
    if '--compile-only' in sys.argv: compile_only()
    elif '--case' in sys.argv: case(sys.argv[sys.argv.index('--case') + 1])
    elif '--debug' in sys.argv: debug()
    else: main()
