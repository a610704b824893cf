"""Prototype (not in the library; not yet run on a GPU): fc1 (gate/up GEMM + SwiGLU) with the warp-specialised schedule
of `experts._pmm_ws_kernel` (a loading warp, two consumer warpgroups taking turns with their main loops).

fc1 is the expert kernel furthest from the plain products (≈ 510 TFLOP/s against ≈ 620 for dx, the same product shape
at `small`): its epilogue stores three tiles (h, g, u), and in `_gmm_kernel` (one program per tile) nothing overlaps
it. Here a consumer's tile is 128 rows × 64 columns of h: its weight slot is filled by two TMA loads, the 64 gate
columns and the matching 64 up columns of w1[e], into the two halves of one (BK, 128) buffer, so one 128 × 128
accumulator holds both; the epilogue splits it in registers (column bit 6 of the wgmma layout is a register index),
computes h = silu(g)·u (× the row's routing weight) and stores h, g and u — by TMA for a whole tile, masked for an
expert's last one — while the other consumer multiplies. The outputs are `_fc1`'s (h (N, I), gu (N, 2I) gate|up): no
change elsewhere. Needs H % 64 == 0 (w1's K rows in whole steps) and I % 8 == 0 (16-byte rows of the gu views).

    python3 benchmarks/fc1_gluon.py --compile-only            # CPU: compile for sm90 (shared memory, registers)
    PYTHONPATH=$PWD python3 benchmarks/fc1_gluon.py --debug   # GPU: small cases first, each in its own process
    PYTHONPATH=$PWD python3 benchmarks/fc1_gluon.py           # GPU: against `_fc1`, interleaved rounds; $OUT/fc1_gluon.json
"""
import os, sys, json, datetime, statistics
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch, triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor
from triton.experimental.gluon.language.nvidia.hopper import tma, mbarrier, fence_async_shared, warpgroup_mma, warpgroup_mma_wait
from pithtrain import experts as X

@gluon.jit
def _f1_producer(a_d, w_d, table, K, I, NPROG, ready, empty, a_bufs, b_bufs, BM:gl.constexpr, BH:gl.constexpr,
                 BK:gl.constexpr, S:gl.constexpr):
    "One warp: per k-step the rows' A tile and, into the two halves of one B slot, the gate and the up columns."
    n_n = gl.cdiv(I, BH)
    nk = gl.cdiv(K, BK)
    c = 0
    for t in range(gl.program_id(0), gl.load(table) * n_n, NPROG):
        pm, pn = t // n_n, t % n_n
        row0, e = gl.load(table + 1 + 3 * pm), gl.load(table + 3 + 3 * pm)
        for k in range(nk):
            s = c % S
            mbarrier.wait(empty.index(s), ((c // S) & 1) ^ 1)
            mbarrier.expect(ready.index(s), a_d.block_type.nbytes + 2 * w_d.block_type.nbytes)
            tma.async_copy_global_to_shared(a_d, [row0, k * BK], ready.index(s), a_bufs.index(s))
            b = b_bufs.index(s)
            tma.async_copy_global_to_shared(w_d, [e * K + k * BK, pn * BH], ready.index(s), b.slice(0, BH, 1))
            tma.async_copy_global_to_shared(w_d, [e * K + k * BK, I + pn * BH], ready.index(s), b.slice(BH, BH, 1))
            c += 1

@gluon.jit
def _f1_consumer(h_d, g_d, u_d, h, gu, rw, table, K, I, NPROG, ready, empty, done, a_bufs, b_bufs, hb, gb, ub,
                 WHO:gl.constexpr, ROWW:gl.constexpr, BM:gl.constexpr, BH:gl.constexpr, BK:gl.constexpr, S:gl.constexpr):
    "One warpgroup: tiles WHO, WHO + 2, …; the [gate | up] accumulator split in registers into h, g and u."
    acc_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 2 * BH, 16])
    n_n = gl.cdiv(I, BH)
    nk = gl.cdiv(K, BK)
    m = 0
    for t in range(gl.program_id(0) + WHO * NPROG, gl.load(table) * n_n, 2 * NPROG):
        pm, pn = t // n_n, t % n_n
        row0, rend = gl.load(table + 1 + 3 * pm), gl.load(table + 2 + 3 * pm)
        if WHO == 1: mbarrier.wait(done.index(0), m & 1)
        else: mbarrier.wait(done.index(1), (m - 1) & 1, pred=m > 0)
        acc = gl.zeros([BM, 2 * BH], gl.float32, acc_l)
        cnt = (2 * m + WHO) * nk
        for k in range(nk):
            s = cnt % S
            mbarrier.wait(ready.index(s), (cnt // S) & 1)
            acc = warpgroup_mma(a_bufs.index(s), b_bufs.index(s), acc, use_acc=k > 0, is_async=True)
            acc = warpgroup_mma_wait(1, deps=(acc,))
            mbarrier.arrive(empty.index((cnt + S - 1) % S), pred=k > 0)
            cnt += 1
        acc = warpgroup_mma_wait(0, deps=(acc,))
        mbarrier.arrive(empty.index((cnt + S - 1) % S))
        mbarrier.arrive(done.index(WHO))
        g, u = gl.split(gl.permute(gl.reshape(acc, [BM, 2, BH]), [0, 2, 1]))
        hv = g / (1.0 + gl.exp(-g)) * u
        if ROWW:
            rr = row0 + gl.arange(0, BM, layout=gl.SliceLayout(1, hv.type.layout))
            hv = hv * gl.load(rw + gl.minimum(rr, rend - 1)).to(gl.float32)[:, None]
        if row0 + BM <= rend:   # a whole tile of this expert's rows: three TMA stores (the buffers' last ones out first)
            tma.store_wait(0)
            hb.store(hv.to(h.dtype.element_ty))
            gb.store(g.to(gu.dtype.element_ty))
            ub.store(u.to(gu.dtype.element_ty))
            fence_async_shared()
            tma.async_copy_shared_to_global(h_d, [row0, pn * BH], hb)
            tma.async_copy_shared_to_global(g_d, [row0, pn * BH], gb)
            tma.async_copy_shared_to_global(u_d, [row0, pn * BH], ub)
        else:
            lay: gl.constexpr = hv.type.layout
            rm = row0 + gl.arange(0, BM, layout=gl.SliceLayout(1, lay))
            rn = pn * BH + gl.arange(0, BH, layout=gl.SliceLayout(0, lay))
            msk = (rm < rend)[:, None] & (rn < I)[None, :]
            r64 = rm.to(gl.int64)[:, None]
            gl.store(h + r64 * I + rn[None, :], hv.to(h.dtype.element_ty), mask=msk)
            gl.store(gu + r64 * (2 * I) + rn[None, :], g.to(gu.dtype.element_ty), mask=msk)
            gl.store(gu + r64 * (2 * I) + I + rn[None, :], u.to(gu.dtype.element_ty), mask=msk)
        m += 1
    tma.store_wait(0)

@gluon.jit
def _f1_first(h_d, g_d, u_d, h, gu, rw, table, K, I, NPROG, ready, empty, done, a_bufs, b_bufs, obufs, ROWW:gl.constexpr,
              BM:gl.constexpr, BH:gl.constexpr, BK:gl.constexpr, S:gl.constexpr):
    _f1_consumer(h_d, g_d, u_d, h, gu, rw, table, K, I, NPROG, ready, empty, done, a_bufs, b_bufs, obufs.index(0),
                 obufs.index(1), obufs.index(2), 0, ROWW, BM, BH, BK, S)

@gluon.jit
def _f1_second(a_d, w_d, h_d, g_d, u_d, h, gu, rw, table, K, I, NPROG, ready, empty, done, a_bufs, b_bufs, obufs,
               ROWW:gl.constexpr, BM:gl.constexpr, BH:gl.constexpr, BK:gl.constexpr, S:gl.constexpr):
    _f1_consumer(h_d, g_d, u_d, h, gu, rw, table, K, I, NPROG, ready, empty, done, a_bufs, b_bufs, obufs.index(3),
                 obufs.index(4), obufs.index(5), 1, ROWW, BM, BH, BK, S)

@gluon.jit
def _f1_loads(a_d, w_d, h_d, g_d, u_d, h, gu, rw, table, K, I, NPROG, ready, empty, done, a_bufs, b_bufs, obufs,
              ROWW:gl.constexpr, BM:gl.constexpr, BH:gl.constexpr, BK:gl.constexpr, S:gl.constexpr):
    _f1_producer(a_d, w_d, table, K, I, NPROG, ready, empty, a_bufs, b_bufs, BM, BH, BK, S)

@gluon.jit
def _fc1_ws_kernel(a_d, w_d, h_d, g_d, u_d, h, gu, rw, table, K, I, NPROG, ROWW:gl.constexpr, BM:gl.constexpr,
                   BH:gl.constexpr, BK:gl.constexpr, S:gl.constexpr):
    "gu = a[rows of e] @ w1[e] (gate | up), h = silu(g)·u (· rw[row]), over the table's row tiles."
    a_bufs = gl.allocate_shared_memory(a_d.dtype, [S, BM, BK], a_d.layout)
    b_lay: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BK, 2 * BH], gl.bfloat16)
    b_bufs = gl.allocate_shared_memory(w_d.dtype, [S, BK, 2 * BH], b_lay)
    obufs = gl.allocate_shared_memory(h_d.dtype, [6, BM, BH], h_d.layout)   # h, g, u per consumer
    ready = gl.allocate_shared_memory(gl.int64, [S, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [S, 1], mbarrier.MBarrierLayout())
    done = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(S):
        mbarrier.init(ready.index(s), count=1)
        mbarrier.init(empty.index(s), count=1)
    for s in gl.static_range(2): mbarrier.init(done.index(s), count=1)
    gl.warp_specialize([(_f1_first, (h_d, g_d, u_d, h, gu, rw, table, K, I, NPROG, ready, empty, done, a_bufs, b_bufs, obufs,
                                     ROWW, BM, BH, BK, S)),
                        (_f1_second, (a_d, w_d, h_d, g_d, u_d, h, gu, rw, table, K, I, NPROG, ready, empty, done, a_bufs, b_bufs,
                                      obufs, ROWW, BM, BH, BK, S)),
                        (_f1_loads, (a_d, w_d, h_d, g_d, u_d, h, gu, rw, table, K, I, NPROG, ready, empty, done, a_bufs, b_bufs,
                                     obufs, ROWW, BM, BH, BK, S))], [4, 1], [232, 40])

CFG = (128, 64, 64, 4)   # BM, BH (h columns a tile: the accumulator is 2·BH wide), BK, slots

def launch(a, offs, w1, h, gu, rw=None, table=None, cfg=CFG):
    "h, gu = fc1 of the plan rows a (N, H) with w1 (E, H, 2I) (gate | up), as `experts._fc1` computes them."
    BM, BH, BK, S = cfg
    (N, K), I = a.shape, h.shape[1]
    lay = lambda shape: gl.NVMMASharedLayout.get_default_for(shape, gl.bfloat16)
    d = lambda t, shape: GluonDescriptor(t, list(t.shape), list(t.stride()), shape, lay(shape))
    if table is None: table = X._tile_table(offs, N, BM)
    n = X._nprog(h.device)
    _fc1_ws_kernel[(n,)](d(a, [BM, BK]), d(w1.view(-1, w1.shape[-1]), [BK, BH]), d(h, [BM, BH]), d(gu[:, :I], [BM, BH]),
                         d(gu[:, I:], [BM, BH]), h, gu, rw if rw is not None else h, table, K, I, n, ROWW=rw is not None,
                         BM=BM, BH=BH, BK=BK, S=S, num_warps=4, maxnreg=168)
    return h, gu

def reference(a, offs, w1, rw):
    "`_fc1`'s outputs (the library's Triton kernel)."
    N, (E, K, I2) = a.shape[0], w1.shape
    h, gu = torch.empty(N, I2 // 2, device=a.device, dtype=a.dtype), torch.empty(N, I2, device=a.device, dtype=a.dtype)
    X._launch(X._fc1, a, None, offs, w1, None, h, gu, K, I2 // 2, I2 // 2, w1.stride(2), w1.stride(1), 1, rw=rw)
    return h, gu

def compile_only():
    import re, subprocess, glob
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    ptxas = glob.glob(os.path.join(os.path.dirname(triton.__file__), 'backends/nvidia/bin/ptxas'))[0]
    BM, BH, BK, S = CFG
    lay = lambda shape: gl.NVMMASharedLayout.get_default_for(shape, gl.bfloat16)
    ds = lambda shape: f'tensordesc<bf16[{shape[0]},{shape[1]}],{lay(shape)!r}>'
    for roww in (False, True):
        sig = dict(a_d=ds([BM, BK]), w_d=ds([BK, BH]), h_d=ds([BM, BH]), g_d=ds([BM, BH]), u_d=ds([BM, BH]), h='*bf16', gu='*bf16',
                   rw='*fp32', table='*i32', K='i32', I='i32', NPROG='i32', ROWW='constexpr', BM='constexpr', BH='constexpr',
                   BK='constexpr', S='constexpr')
        try:
            ck = triton.compile(GluonASTSource(_fc1_ws_kernel, sig, dict(ROWW=roww, BM=BM, BH=BH, BK=BK, S=S)),
                                target=GPUTarget('cuda', 90, 32), options=dict(num_warps=4, maxnreg=168))
            open('/tmp/fc1_ws.ptx', 'w').write(ck.asm['ptx'])
            o = subprocess.run([ptxas, '-arch=sm_90a', '-v', '/tmp/fc1_ws.ptx', '-o', '/tmp/fc1_ws.cubin'], capture_output=True, text=True).stderr
            print('ROWW', roww, 'smem', ck.metadata.shared, 'regs', re.findall(r'Used (\d+) registers', o),
                  'spill', re.findall(r'(\d+) bytes spill stores', o),
                  'wgmma', sorted(set(re.findall(r'wgmma\.mma_async\.sync\.aligned\.(m\d+n\d+k\d+)', ck.asm['ptx']))), flush=True)
        except Exception as ex:
            e = ex
            while e is not None:
                print('ROWW', roww, 'FAILED', type(e).__name__, str(e)[-800:].replace('\n', ' | '), flush=True); e = e.__cause__

def case(name):
    "One debugging case in its own process: `tiny` (experts of 0, 1, 200, 130, 33 rows) or `small` (the e2e shape)."
    torch.manual_seed(0)
    if name.startswith('tiny'):
        rows, K, I = [0, 1, 200, 130, 33], 128, 128
        offs = torch.tensor([0] + rows, device='cuda').cumsum(0).to(torch.int32)
    else:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from experts_sweep import routing
        plan, offs = routing(16384, 8, 64); K, I = 1024, 512
    N, E = int(offs[-1]), offs.numel() - 1
    a = torch.randn(N, K, device='cuda', dtype=torch.bfloat16)
    w1 = (torch.randn(E, K, 2 * I, device='cuda') / K**0.5).bfloat16()
    rw = torch.rand(N, device='cuda') if name.endswith('rw') else None
    hr, gr = reference(a, offs, w1, rw)
    h, gu = torch.full_like(hr, float('nan')), torch.full_like(gr, float('nan'))
    launch(a, offs, w1, h, gu, rw); torch.cuda.synchronize()
    rel = lambda x, y: ((x.float() - y.float()).norm() / y.float().norm()).item()
    print(name, 'h rel err', rel(h, hr), 'gu rel err', rel(gu, gr), 'nan', h.isnan().sum().item(), gu.isnan().sum().item())

def debug():
    import subprocess
    env = dict(os.environ, CUDA_LAUNCH_BLOCKING='1')
    for name in ('tiny', 'tiny-rw', 'small', 'small-rw'):
        try:
            r = subprocess.run([sys.executable, os.path.abspath(__file__), '--case', name], capture_output=True, text=True, timeout=90, env=env)
            print(f'== {name}: rc {r.returncode}', r.stdout[-800:], r.stderr[-800:], flush=True)
        except subprocess.TimeoutExpired: print(f'== {name}: TIMEOUT (a hang: barriers)', flush=True)

def main(rounds=5):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from experts_sweep import routing, SHAPES, interleaved
    res = dict(date=datetime.date.today().isoformat(), device=torch.cuda.get_device_name(),
               command='python3 benchmarks/fc1_gluon.py ' + ' '.join(sys.argv[1:]), rows=[])
    out = os.environ.get('OUT')
    for sname, (T, k, E, H, I) in SHAPES.items():
        plan, offs = routing(T, k, E)
        N = plan.token_idx.numel()
        a, w1, rw = torch.randn(N, H, device='cuda', dtype=torch.bfloat16), (torch.randn(E, H, 2 * I, device='cuda') * 0.02).bfloat16(), torch.rand(N, device='cuda')
        hr, gr = reference(a, offs, w1, rw)
        h, gu = torch.full_like(hr, float('nan')), torch.full_like(gr, float('nan'))
        table = X._tile_table(offs, N, CFG[0])
        launch(a, offs, w1, h, gu, rw, table); torch.cuda.synchronize()
        rel = lambda x, y: ((x.float() - y.float()).norm() / y.float().norm()).item()
        res['rows'].append(dict(shape=sname, err_h=rel(h, hr), err_gu=rel(gu, gr))); print(res['rows'][-1], flush=True)
        fns = {'_fc1': lambda: reference(a, offs, w1, rw), 'fc1 gluon': lambda: launch(a, offs, w1, h, gu, rw, table)}
        ts = interleaved(fns, rounds, rep=30)
        for n in fns:
            md = statistics.median(ts[n])
            res['rows'].append(dict(shape=sname, kernel=n, us_median=round(md, 1), tflops=round(4 * N * H * I / md / 1e6, 1),
                                    us=[round(t, 1) for t in ts[n]]))
            print(res['rows'][-1], flush=True)
        if out: json.dump(res, open(os.path.join(out, 'fc1_gluon.json'), 'w'), indent=1)

if __name__ == '__main__':
    if '--compile-only' in sys.argv: compile_only()
    elif '--case' in sys.argv: case(sys.argv[sys.argv.index('--case') + 1])
    elif '--debug' in sys.argv: debug()
    else: main()
