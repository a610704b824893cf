"""Prototype (not in the library): the plain expert products (fc2, dx, dh) as a warp-specialised Gluon kernel.

`experts._pmm_kernel` (Triton, persistent, flattened software pipeline) runs ≈ 600–630 TFLOP/s where cuBLAS runs a
dense product of a similar shape at ≈ 730 in the same process. cuBLAS's Hopper kernels are warp-specialised; Triton
3.6's automatic warp specialisation ran slower (NOTES-experts round 6), so this writes the schedule by hand in Gluon
(Triton's explicit dialect, shipped with 3.6):

- one *producer* warp walks the program's tiles (p, p + NPROG, …) and issues their TMA loads into a ring of S
  shared-memory slots (`ready[s]` counts the bytes in, `empty[s]` is released by the consumer);
- two *consumer* warpgroups take alternate tiles (ping-pong): each multiplies its tile (BM × BN, accumulator in its
  registers, `warpgroup_mma` straight from the slots) and stores it while the other one multiplies the next tile —
  the epilogue no longer stalls the tensor cores. Whole tiles leave through a TMA store from a per-consumer buffer,
  an expert's last, partial tile by a masked store.
- The tile → (first row, end row, expert) map is a table built by one small Triton program from the offsets.

    PYTHONPATH=$PWD python3 benchmarks/pmm_gluon.py      # GPU: checks against `_pmm`, interleaved rounds; $OUT/pmm_gluon.json
    python3 benchmarks/pmm_gluon.py --compile-only      # CPU: compile every config for sm90 (shared memory, registers)
"""
import os, sys, json, datetime, statistics
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch, triton, triton.language as tl
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
from triton.experimental.gluon.language.nvidia.hopper import tma, mbarrier, fence_async_shared, warpgroup_mma, warpgroup_mma_wait
from pithtrain import experts as X
from pithtrain.experts import _expert_rows

@triton.jit
def _tile_table_kernel(offs, table, E, MAXT, BM:tl.constexpr, EP2:tl.constexpr, TB:tl.constexpr):
    "table[0] = number of row tiles; table[1 + 3j : 4 + 3j] = (first row, end of the expert's rows, expert) of row tile j."
    e_, lo, hi, tiles, ends = _expert_rows(offs, E, BM, EP2)
    total = tl.sum(tiles, 0)
    tl.store(table, total)
    for j0 in range(0, MAXT, TB):
        j = j0 + tl.arange(0, TB)
        here = (ends[None, :] - tiles[None, :] <= j[:, None]) & (j[:, None] < ends[None, :])   # (TB, EP2): tile j is expert e's
        e = tl.sum(tl.where(here, e_[None, :], 0), 1)
        first = tl.sum(tl.where(here, (ends - tiles)[None, :], 0), 1)
        row0 = tl.sum(tl.where(here, lo[None, :], 0), 1) + (j - first) * BM
        rend = tl.sum(tl.where(here, hi[None, :], 0), 1)
        ok = j < total
        tl.store(table + 1 + 3 * j, row0, mask=ok)
        tl.store(table + 2 + 3 * j, rend, mask=ok)
        tl.store(table + 3 + 3 * j, e, mask=ok)

@gluon.jit
def _producer(a_desc, w_desc, table, K, NO, NPROG, ready, empty, a_bufs, b_bufs, TW:gl.constexpr,
              BM:gl.constexpr, BN:gl.constexpr, BK:gl.constexpr, S:gl.constexpr):
    "One warp: every k-step of every tile of this program, in order, into the slot ring."
    n_n = gl.cdiv(NO, BN)
    total = gl.load(table) * n_n
    nk = gl.cdiv(K, BK)
    c = 0
    for t in range(gl.program_id(0), total, NPROG):
        pm, pn = t // n_n, t % n_n
        row0 = gl.load(table + 1 + 3 * pm)
        e = gl.load(table + 3 + 3 * pm)
        for k in range(nk):
            s = c % S
            mbarrier.wait(empty.index(s), ((c // S) & 1) ^ 1)   # a fresh barrier counts as released
            mbarrier.expect(ready.index(s), a_desc.block_type.nbytes + w_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(a_desc, [row0, k * BK], ready.index(s), a_bufs.index(s))
            if TW: tma.async_copy_global_to_shared(w_desc, [e * NO + pn * BN, k * BK], ready.index(s), b_bufs.index(s))
            else: tma.async_copy_global_to_shared(w_desc, [e * K + k * BK, pn * BN], ready.index(s), b_bufs.index(s))
            c += 1

@gluon.jit
def _consumer(c_desc, c_ptr, table, K, NO, sc_m, NPROG, ready, empty, done, a_bufs, b_bufs, c_smem, WHO:gl.constexpr, TW:gl.constexpr,
              BM:gl.constexpr, BN:gl.constexpr, BK:gl.constexpr, S:gl.constexpr, NC:gl.constexpr):
    "One warpgroup: tiles WHO, WHO + 2, … of this program's sequence — multiply from the slots, then store."
    acc_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BN, 16])
    n_n = gl.cdiv(NO, BN)
    total = gl.load(table) * n_n
    nk = gl.cdiv(K, BK)
    i = WHO
    m = 0   # this consumer's tile count
    for t in range(gl.program_id(0) + WHO * NPROG, total if WHO < NC else 0, NC * NPROG):
        pm, pn = t // n_n, t % n_n
        row0 = gl.load(table + 1 + 3 * pm)
        rend = gl.load(table + 2 + 3 * pm)
        # the two consumers' main loops take turns (tile i after tile i − 1's): a slot's barrier is then never two
        # phases behind its waiter (its parity alone could not tell), and one multiplies while the other stores
        if NC == 2:
            if WHO == 1: mbarrier.wait(done.index(0), m & 1)
            else: mbarrier.wait(done.index(1), (m - 1) & 1, pred=m > 0)
        acc = gl.zeros([BM, BN], gl.float32, acc_l)
        c = i * nk
        for k in range(nk):
            s = c % S
            mbarrier.wait(ready.index(s), (c // S) & 1)
            b = b_bufs.index(s).permute((1, 0)) if TW else b_bufs.index(s)
            acc = warpgroup_mma(a_bufs.index(s), b, acc, use_acc=k > 0, is_async=True)
            acc = warpgroup_mma_wait(1, deps=(acc,))   # the previous k-step's product is done: its slot is free
            mbarrier.arrive(empty.index((c + S - 1) % S), pred=k > 0)
            c += 1
        acc = warpgroup_mma_wait(0, deps=(acc,))
        mbarrier.arrive(empty.index((c + S - 1) % S))
        if NC == 2: mbarrier.arrive(done.index(WHO))
        out = acc.to(c_ptr.dtype.element_ty)
        if row0 + BM <= rend:   # a whole tile of this expert: TMA store (the last one must have left the buffer)
            tma.store_wait(0)
            c_smem.store(out)
            fence_async_shared()
            tma.async_copy_shared_to_global(c_desc, [row0, pn * BN], c_smem)
        else:
            rm = row0 + gl.arange(0, BM, layout=gl.SliceLayout(1, acc_l))
            rn = pn * BN + gl.arange(0, BN, layout=gl.SliceLayout(0, acc_l))
            gl.store(c_ptr + rm.to(gl.int64)[:, None] * sc_m + rn[None, :], out,
                     mask=(rm < rend)[:, None] & (rn < NO)[None, :])
        i += NC
        m += 1
    tma.store_wait(0)

@gluon.jit
def _consumer0(c_desc, c_ptr, table, K, NO, sc_m, NPROG, ready, empty, done, a_bufs, b_bufs, c_smem, TW:gl.constexpr,
               BM:gl.constexpr, BN:gl.constexpr, BK:gl.constexpr, S:gl.constexpr, NC:gl.constexpr):
    _consumer(c_desc, c_ptr, table, K, NO, sc_m, NPROG, ready, empty, done, a_bufs, b_bufs, c_smem.index(0), 0, TW, BM, BN, BK, S, NC)

@gluon.jit
def _consumer1(a_desc, w_desc, c_desc, c_ptr, table, K, NO, sc_m, NPROG, ready, empty, done, a_bufs, b_bufs, c_smem, TW:gl.constexpr,
               BM:gl.constexpr, BN:gl.constexpr, BK:gl.constexpr, S:gl.constexpr, NC:gl.constexpr):
    _consumer(c_desc, c_ptr, table, K, NO, sc_m, NPROG, ready, empty, done, a_bufs, b_bufs, c_smem.index(1), 1, TW, BM, BN, BK, S, NC)

@gluon.jit
def _producer_w(a_desc, w_desc, c_desc, c_ptr, table, K, NO, sc_m, NPROG, ready, empty, done, a_bufs, b_bufs, c_smem, TW:gl.constexpr,
                BM:gl.constexpr, BN:gl.constexpr, BK:gl.constexpr, S:gl.constexpr, NC:gl.constexpr):
    _producer(a_desc, w_desc, table, K, NO, NPROG, ready, empty, a_bufs, b_bufs, TW, BM, BN, BK, S)

@gluon.jit
def _pmm_ws_kernel(a_desc, w_desc, c_desc, c_ptr, table, K, NO, sc_m, NPROG, TW:gl.constexpr, BM:gl.constexpr, BN:gl.constexpr,
                   BK:gl.constexpr, S:gl.constexpr, NC:gl.constexpr):
    "c[rows of e] = a[rows of e] @ w[e] (w[e]ᵀ with TW) for every row tile of the table: producer warp + two consumer warpgroups."
    a_bufs = gl.allocate_shared_memory(a_desc.dtype, [S, BM, BK], a_desc.layout)
    b_bufs = gl.allocate_shared_memory(w_desc.dtype, [S] + w_desc.block_type.shape, w_desc.layout)
    c_smem = gl.allocate_shared_memory(c_desc.dtype, [2, BM, BN], c_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [S, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [S, 1], mbarrier.MBarrierLayout())
    done = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())   # a consumer's main loop finished
    for s in gl.static_range(S):
        mbarrier.init(ready.index(s), count=1)
        mbarrier.init(empty.index(s), count=1)
    for s in gl.static_range(2): mbarrier.init(done.index(s), count=1)
    gl.warp_specialize([(_consumer0, (c_desc, c_ptr, table, K, NO, sc_m, NPROG, ready, empty, done, a_bufs, b_bufs, c_smem, TW, BM, BN, BK, S, NC)),
                        (_consumer1, (a_desc, w_desc, c_desc, c_ptr, table, K, NO, sc_m, NPROG, ready, empty, done, a_bufs, b_bufs, c_smem,
                                      TW, BM, BN, BK, S, NC)),
                        (_producer_w, (a_desc, w_desc, c_desc, c_ptr, table, K, NO, sc_m, NPROG, ready, empty, done, a_bufs, b_bufs, c_smem,
                                       TW, BM, BN, BK, S, NC))], [4, 1], [232, 40])

def layouts(BM, BN, BK, tw):
    return (gl.NVMMASharedLayout.get_default_for([BM, BK], gl.bfloat16),
            gl.NVMMASharedLayout.get_default_for([BN, BK] if tw else [BK, BN], gl.bfloat16),
            gl.NVMMASharedLayout.get_default_for([BM, BN], gl.bfloat16))

def table_for(offs, N, BM):
    "The row-tile table of a plan (one Triton program); reused by every product of the layer with this BM."
    E = offs.numel() - 1
    maxt = triton.cdiv(N, BM) + E
    table = torch.empty(1 + 3 * maxt, device=offs.device, dtype=torch.int32)
    _tile_table_kernel[(1,)](offs, table, E, maxt, BM=BM, EP2=triton.next_power_of_2(E), TB=128)
    return table

def launch(a, offs, w, c, K, NO, tw, cfg, table=None, nc=2):
    "c[rows of e] = a[rows of e] @ w[e] (w (E, K, NO)), or @ w[e]ᵀ with tw (w (E, NO, K))."
    BM, BN, BK, S = cfg
    la, lw, lc = layouts(BM, BN, BK, tw)
    w2 = w.view(-1, w.shape[-1])
    a_desc = TensorDescriptor.from_tensor(a, [BM, BK], la)
    w_desc = TensorDescriptor.from_tensor(w2, [BN, BK] if tw else [BK, BN], lw)
    c_desc = TensorDescriptor.from_tensor(c, [BM, BN], lc)
    if table is None: table = table_for(offs, a.shape[0], BM)
    n = X._nprog(c.device)
    _pmm_ws_kernel[(n,)](a_desc, w_desc, c_desc, c, table, K, NO, c.stride(0), n, TW=tw, BM=BM, BN=BN, BK=BK, S=S, NC=nc,
                         num_warps=4, maxnreg=168)
    return c

CFGS = ((128, 128, 64, 5), (128, 128, 64, 4), (128, 128, 32, 8), (64, 256, 64, 4))

def compile_only():
    "Compile every config for sm90 on this machine: shared memory and registers per partition (ptxas -v)."
    import re, subprocess, glob
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    ptxas = glob.glob(os.path.join(os.path.dirname(triton.__file__), 'backends/nvidia/bin/ptxas'))[0]
    for cfg in CFGS:
        for tw in (False, True):
            BM, BN, BK, S = cfg
            la, lw, lc = layouts(BM, BN, BK, tw)
            d = lambda shape, l: f'tensordesc<bf16[{shape[0]},{shape[1]}],{l!r}>'
            sig = dict(a_desc=d([BM, BK], la), w_desc=d([BN, BK] if tw else [BK, BN], lw), c_desc=d([BM, BN], lc), c_ptr='*bf16',
                       table='*i32', K='i32', NO='i32', sc_m='i32', NPROG='i32', TW='constexpr', BM='constexpr', BN='constexpr',
                       BK='constexpr', S='constexpr', NC='constexpr')
            try:
                ck = triton.compile(GluonASTSource(_pmm_ws_kernel, sig, dict(TW=tw, BM=BM, BN=BN, BK=BK, S=S, NC=2)),
                                    target=GPUTarget('cuda', 90, 32), options=dict(num_warps=4, maxnreg=168))
                open('/tmp/pmm_ws.ptx', 'w').write(ck.asm['ptx'])
                o = subprocess.run([ptxas, '-arch=sm_90a', '-v', '/tmp/pmm_ws.ptx', '-o', '/tmp/pmm_ws.cubin'], capture_output=True, text=True).stderr
                print(cfg, 'tw', tw, 'smem', ck.metadata.shared, 'regs', re.findall(r'Used (\d+) registers', o),
                      'spill', re.findall(r'(\d+) bytes spill stores', o), 'setmaxnreg', sorted(set(re.findall(r'setmaxnreg\.\w+\.sync\.aligned\.u32 (\d+)', ck.asm['ptx']))), flush=True)
            except Exception as ex: print(cfg, 'tw', tw, 'FAILED', str(ex)[-1500:], flush=True)

def main(rounds=4):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from experts_sweep import routing, SHAPES
    from triton.testing import do_bench
    res = dict(date=datetime.date.today().isoformat(), device=torch.cuda.get_device_name(),
               command='python3 benchmarks/pmm_gluon.py ' + ' '.join(sys.argv[1:]), rows=[])
    bf, out = torch.bfloat16, os.environ.get('OUT')
    def save():
        if out: json.dump(res, open(os.path.join(out, 'pmm_gluon.json'), 'w'), indent=1)
    for sname, (T, k, E, H, I) in SHAPES.items():
        plan, offs = routing(T, k, E)
        N = plan.token_idx.numel()
        h, dgu, dy = (torch.randn(N, n, device='cuda', dtype=bf) for n in (I, 2 * I, H))
        w1, w2 = torch.randn(E, H, 2 * I, device='cuda', dtype=bf) * 0.02, torch.randn(E, I, H, device='cuda', dtype=bf) * 0.02
        for what, a, w, K, NO, tw in (('fc2', h, w2, I, H, False), ('dx', dgu, w1, 2 * I, H, True), ('dh', dy, w2, H, I, True)):
            flop = 2 * N * K * NO
            c = torch.empty(N, NO, device='cuda', dtype=bf)
            ref = X._launch(X._mm, a, None, offs, w, None, torch.empty_like(c), None, K, NO, I, w.stride(2) if not tw else w.stride(1),
                            w.stride(1) if not tw else w.stride(2), 0).float()
            fns = {'_pmm': lambda: X._launch(X._mm, a, None, offs, w, None, c, None, K, NO, I, w.stride(2) if not tw else w.stride(1),
                                             w.stride(1) if not tw else w.stride(2), 0)}
            for cfg, nc in [(c_, 2) for c_ in CFGS] + [(CFGS[0], 1)]:
                try:
                    table = table_for(offs, N, cfg[0])
                    c.fill_(float('nan')); launch(a, offs, w, c, K, NO, tw, cfg, table, nc); torch.cuda.synchronize()
                    err = ((c.float() - ref).norm() / ref.norm()).item()
                    res['rows'].append(dict(shape=sname, gemm=what, cfg=cfg, consumers=nc, rel_err=err, nan=bool(c.isnan().any())))
                    print(res['rows'][-1], flush=True)
                    if err < 1e-2: fns[f'{cfg} consumers={nc}'] = (lambda cfg, table, nc: lambda: launch(a, offs, w, c, K, NO, tw, cfg, table, nc))(cfg, table, nc)
                except Exception as ex:
                    res['rows'].append(dict(shape=sname, gemm=what, cfg=cfg, consumers=nc, error=repr(ex)[:400])); print(res['rows'][-1], flush=True)
                    raise
                save()
            ts = {n: [] for n in fns}
            for _ in range(rounds):
                for n, f in fns.items(): ts[n].append(do_bench(f, warmup=5, rep=30, return_mode='median') * 1e3)
            for n in fns:
                m = statistics.median(ts[n])
                res['rows'].append(dict(shape=sname, gemm=what, kernel=n, us_median=round(m, 1), tflops=round(flop / m / 1e6, 1), us=[round(t, 1) for t in ts[n]]))
                print(res['rows'][-1], flush=True)
            save()

def case(name):
    "One debugging case (run in its own process by `--debug`: a failed launch poisons the CUDA context)."
    torch.manual_seed(0)
    rows = [0, 1, 200, 130, 33]
    offs = torch.tensor([0] + list(torch.tensor(rows).cumsum(0)), dtype=torch.int32, device='cuda')
    N, K, NO, E = sum(rows), 128, 128, len(rows)
    if name == 'table':
        t = table_for(offs, N, 128).tolist()
        print('table', t[0], [t[1 + 3 * j: 4 + 3 * j] for j in range(t[0])])
        return
    nc, tw = int(name[-1]), 'tw' in name
    if name.startswith('small'):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from experts_sweep import routing
        plan, offs = routing(16384, 8, 64); N, K, NO, E = plan.token_idx.numel(), 512, 1024, 64
    a = torch.randn(N, K, device='cuda', dtype=torch.bfloat16)
    w = torch.randn(E, NO, K, device='cuda', dtype=torch.bfloat16) if tw else torch.randn(E, K, NO, device='cuda', dtype=torch.bfloat16)
    c = torch.full((N, NO), float('nan'), device='cuda', dtype=torch.bfloat16)
    launch(a, offs, w, c, K, NO, tw, (128, 128, 64, 4), nc=nc); torch.cuda.synchronize()
    o = offs.tolist()
    ref = torch.cat([a[o[e]:o[e + 1]].float() @ (w[e].float().T if tw else w[e].float()) for e in range(E)])
    print(name, 'rel err', ((c.float() - ref).norm() / ref.norm()).item(), 'nan', c.isnan().sum().item())

def debug():
    import subprocess, shutil
    print('compute-sanitizer:', shutil.which('compute-sanitizer'), flush=True)
    env = dict(os.environ, CUDA_LAUNCH_BLOCKING='1')
    for name in ('table', 'tiny-notw-nc1', 'tiny-notw-nc2', 'tiny-tw-nc1', 'tiny-tw-nc2', 'small-notw-nc2'):
        try:
            r = subprocess.run([sys.executable, os.path.abspath(__file__), '--case', name], capture_output=True, text=True, timeout=90, env=env)
            print(f'== {name}: rc {r.returncode}', r.stdout[-1500:], r.stderr[-1200:], flush=True)
        except subprocess.TimeoutExpired: print(f'== {name}: TIMEOUT (a hang: barriers)', flush=True)

if __name__ == '__main__':
    if '--compile-only' in sys.argv: compile_only()
    elif '--case' in sys.argv: case(sys.argv[sys.argv.index('--case') + 1])
    elif '--debug' in sys.argv: debug()
    else: main()
