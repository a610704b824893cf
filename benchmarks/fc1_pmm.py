"""Prototype (not in the library): fc1 (gate/up GEMM + SwiGLU) through the persistent, flattened plain-product loop.

`_fc1` is per-tile with two accumulators (gate, up) and three outputs (h, g, u); a flattened persistent form of it
spilled (round 6), and it runs ≈ 510 TFLOP/s where `_pmm` runs dx — the same shape at `small` — at ≈ 620. Here w1's
compute copy has its columns *block-interleaved*: 64 gate columns, the same 64 up columns, the next 64 gate columns, …
so one (BK, BN) tile of the weight holds matching gate and up blocks and the loop is `_pmm`'s (one accumulator). The
epilogue stores the accumulator as gu (in that interleaved order: the backward's SwiGLU pass and dx read it with the
same copy) and splits it in registers — column bit 6 of the wgmma accumulator is a register index — into g and u for
h = silu(g)·u (× the row's routing weight).

    PYTHONPATH=$PWD python3 benchmarks/fc1_pmm.py                # GPU: µs per config against `_fc1`; $OUT/fc1_pmm.json
    PYTHONPATH=$PWD python3 benchmarks/fc1_pmm.py --ab           # GPU: `_fc1` and the two best configs, interleaved rounds
    TRITON_INTERPRET=1 python3 benchmarks/fc1_pmm.py --cpu-smoke  # CPU: equals `_fc1` (awkward experts)
"""
import os, sys, json, datetime
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch, triton, triton.language as tl
from pithtrain import experts as X
from pithtrain.experts import _expert_rows, _tile_rows

BP = 64   # columns per gate (or up) block of the interleaved copy

@triton.jit
def _fc1p_kernel(a_d, w_d, offs, h, gu, rw, E, K, I, sh_m, sg_m, NPROG, MB, ROWW:tl.constexpr, BP:tl.constexpr,
                 EP2:tl.constexpr, BM:tl.constexpr, BN:tl.constexpr, BK:tl.constexpr):
    "gu[rows of e] = a[rows] @ w[e] (interleaved columns), h = silu(g)·u (· rw[row]); program p takes tiles p, p + NPROG, …"
    e_, lo, hi, tiles, ends = _expert_rows(offs, E, BM, EP2)
    NO = 2 * I
    n_tiles = tl.cdiv(NO, BN)
    for t in tl.range(tl.program_id(0), tl.sum(tiles, 0) * n_tiles, NPROG, flatten=True):
        pid_m, pid_n = t // n_tiles, t % n_tiles
        e, row0, rend = _tile_rows(e_, lo, hi, tiles, ends, pid_m, BM)
        acc = tl.zeros((BM, BN), tl.float32)
        for k0 in range(0, K, BK):
            acc = tl.dot(a_d.load([row0, k0]), w_d.load([e * K + k0, pid_n * BN]), acc)
        rm = row0 + tl.arange(0, BM)
        rmask = (rm < rend)[:, None]
        cn = pid_n * BN + tl.arange(0, BN)
        tl.store(gu + rm.to(tl.int64)[:, None] * sg_m + cn[None, :], acc.to(gu.dtype.element_ty), mask=rmask & (cn < NO)[None, :])
        g, u = tl.split(tl.permute(tl.reshape(acc, (BM, BN // (2 * BP), 2, BP)), (0, 1, 3, 2)))
        hv = tl.reshape(g * tl.sigmoid(g) * u, (BM, BN // 2))
        if ROWW: hv = hv * tl.load(rw + tl.minimum(rm, rend - 1)).to(tl.float32)[:, None]
        hn = pid_n * (BN // 2) + tl.arange(0, BN // 2)
        tl.store(h + rm.to(tl.int64)[:, None] * sh_m + hn[None, :], hv.to(h.dtype.element_ty), mask=rmask & (hn < I)[None, :])

def perm(I, dev):
    "Column order of the interleaved copy: for each block b, gate columns b·BP … then up columns I + b·BP …"
    b = torch.arange(I // BP, device=dev)[:, None, None] * BP + torch.arange(BP, device=dev)[None, None, :]
    return torch.cat([b, b + I], 1).reshape(-1)

def launch(kern, a, offs, w1p, h, gu, K, I, rw=None):
    n, E = X._nprog(h.device), offs.numel() - 1
    kern[(n,)](X._desc(a), X._desc(w1p), offs, h, gu, rw if rw is not None else h, E, K, I, h.stride(0), gu.stride(0), n,
               MB=X._mb(a.shape[0]), ROWW=rw is not None, BP=BP, EP2=triton.next_power_of_2(E))

def hook(nargs):
    nargs['a_d'].block_shape, nargs['w_d'].block_shape = [nargs['BM'], nargs['BK']], [nargs['BK'], nargs['BN']]

def tuned(cfgs):
    return triton.autotune([triton.Config({'BM': m, 'BN': n, 'BK': k}, num_warps=w, num_stages=s, pre_hook=hook)
                            for m, n, k, w, s in cfgs], key=['K', 'I', 'MB'], do_bench=X._bench)(_fc1p_kernel)

def reference(a, offs, w1, rw):
    "`_fc1` (the library's) outputs: h (N, I), gu (N, 2I)."
    N, (E, K, I2) = a.shape[0], w1.shape
    h, gu = torch.empty(N, I2 // 2, device=a.device, dtype=a.dtype), torch.empty(N, I2, device=a.device, dtype=a.dtype)
    X._launch(X._fc1, a, None, offs, w1, None, h, gu, K, I2 // 2, I2 // 2, w1.stride(2), w1.stride(1), 1, rw=rw)
    return h, gu

def smoke():
    "Interpreter: experts of 0, 1, 70, 130 and 33 rows, K 64, I 128 (two blocks), with and without row weights."
    torch.manual_seed(0)
    rows = [0, 1, 70, 130, 33]
    offs = torch.tensor([0] + list(torch.tensor(rows).cumsum(0)), dtype=torch.int32)
    N, K, I = sum(rows), 64, 128
    a, w1, rw = torch.randn(N, K), torch.randn(len(rows), K, 2 * I) * 0.2, torch.rand(N)
    p = perm(I, 'cpu')
    for r in (None, rw):
        hr, gr = reference(a, offs, w1, r)
        for cfg in ((32, 128, 32, 4, 1), (32, 256, 32, 4, 1)):
            h, gu = torch.full((N + 8, I), float('nan')), torch.full((N + 8, 2 * I), float('nan'))
            launch(tuned([cfg]), a, offs, w1[:, :, p].contiguous(), h, gu, K, I, r)
            assert h[N:].isnan().all() and gu[N:].isnan().all(), 'a store went past the last expert'
            eh, eg = ((h[:N] - hr).norm() / hr.norm()).item(), ((gu[:N, torch.argsort(p)] - gr).norm() / gr.norm()).item()
            print(f'cfg {cfg} row weights {r is not None}: h rel err {eh:.1e}, gu {eg:.1e}', flush=True)
            assert eh < 1e-5 and eg < 1e-5

CFGS = ((128, 256, 64, 8, 3), (128, 256, 64, 8, 4), (128, 128, 64, 8, 5), (128, 128, 64, 4, 4), (256, 128, 64, 8, 3), (128, 128, 64, 8, 4))

def main():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from experts_sweep import routing, SHAPES
    from triton.testing import do_bench
    res = dict(date=datetime.date.today().isoformat(), device=torch.cuda.get_device_name(),
               command='python3 benchmarks/fc1_pmm.py ' + ' '.join(sys.argv[1:]), rows=[])
    bf, out = torch.bfloat16, os.environ.get('OUT')
    for sname, (T, k, E, H, I) in SHAPES.items():
        plan, offs = routing(T, k, E)
        N = plan.token_idx.numel()
        a, w1, rw = torch.randn(N, H, device='cuda', dtype=bf), torch.randn(E, H, 2 * I, device='cuda', dtype=bf) * 0.02, torch.rand(N, device='cuda')
        p = perm(I, 'cuda'); w1p = w1[:, :, p].contiguous()
        flop = 2 * N * H * 2 * I
        hr, gr = reference(a, offs, w1, rw)
        hr, gr = hr.float(), gr.float()
        t0 = do_bench(lambda: reference(a, offs, w1, rw), warmup=5, rep=40, return_mode='median') * 1e3
        res['rows'].append(dict(shape=sname, kernel='_fc1 (autotuned)', us=round(t0, 1), tflops=round(flop / t0 / 1e6, 1)))
        print(res['rows'][-1], flush=True)
        h, gu = torch.empty(N, I, device='cuda', dtype=bf), torch.empty(N, 2 * I, device='cuda', dtype=bf)
        for cfg in CFGS + ('autotune',):
            kern = tuned(CFGS if cfg == 'autotune' else [cfg])
            try:
                h.fill_(float('nan')); gu.fill_(float('nan')); launch(kern, a, offs, w1p, h, gu, H, I, rw); torch.cuda.synchronize()
                eh = ((h.float() - hr).norm() / hr.norm()).item()
                eg = ((gu.float()[:, torch.argsort(p)] - gr).norm() / gr.norm()).item()
                t = do_bench(lambda: launch(kern, a, offs, w1p, h, gu, H, I, rw), warmup=5, rep=40, return_mode='median') * 1e3
                row = dict(shape=sname, kernel='fc1-pmm', cfg=cfg, us=round(t, 1), tflops=round(flop / t / 1e6, 1), err_h=eh, err_gu=eg)
                if cfg == 'autotune': row['picked'] = str(kern.best_config)
            except Exception as ex: row = dict(shape=sname, kernel='fc1-pmm', cfg=cfg, error=repr(ex)[:300])
            res['rows'].append(row); print(row, flush=True)
            if out: json.dump(res, open(os.path.join(out, 'fc1_pmm.json'), 'w'), indent=1)

def ab(rounds=7):
    """`_fc1` (autotuned) and fc1-pmm at its two best tiles, timed in turn for `rounds` rounds: a sustained load lowers the
    clock, so a kernel timed after a long sweep (the autotuned row above) reads slower than one timed first."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from experts_sweep import routing, SHAPES, interleaved_rows
    res = dict(date=datetime.date.today().isoformat(), device=torch.cuda.get_device_name(),
               command='python3 benchmarks/fc1_pmm.py ' + ' '.join(sys.argv[1:]), rows=[])
    bf, out = torch.bfloat16, os.environ.get('OUT')
    for sname, (T, k, E, H, I) in SHAPES.items():
        plan, offs = routing(T, k, E)
        N = plan.token_idx.numel()
        a, w1, rw = torch.randn(N, H, device='cuda', dtype=bf), torch.randn(E, H, 2 * I, device='cuda', dtype=bf) * 0.02, torch.rand(N, device='cuda')
        w1p = w1[:, :, perm(I, 'cuda')].contiguous()
        h, gu = torch.empty(N, I, device='cuda', dtype=bf), torch.empty(N, 2 * I, device='cuda', dtype=bf)
        fns = {'_fc1': lambda: reference(a, offs, w1, rw)}
        for cfg in CFGS[:2]: fns[str(cfg)] = (lambda kern: lambda: launch(kern, a, offs, w1p, h, gu, H, I, rw))(tuned([cfg]))
        # control: the autotuned `_pmm` (fc2) against a one-config copy of its usual pick — is an autotuned launch slower?
        w2, y = torch.randn(E, I, H, device='cuda', dtype=bf) * 0.02, torch.empty(N, H, device='cuda', dtype=bf)
        def fc2(kern):
            n = X._nprog(y.device)
            return lambda: kern[(n,)](X._desc(h), X._desc(w2), offs, y, y, E, I, H, y.stride(0), n, MB=X._mb(N), HAS_BIAS=False,
                                      TW=False, EP2=triton.next_power_of_2(E))
        fns['fc2 _pmm autotuned'] = fc2(X._pmm)
        fns['fc2 _pmm 128x256x64x8x3'] = fc2(X._tuned(X._pmm_kernel, X._cfgs((128, 256, 64, 8, 3)), ['K', 'NO', 'MB', 'TW']))
        for f in fns.values(): f()
        res['rows'] += interleaved_rows(fns, rounds, flop=2 * N * H * 2 * I, shape=sname)
        if out: json.dump(res, open(os.path.join(out, 'fc1_pmm_ab.json'), 'w'), indent=1)

if __name__ == '__main__': smoke() if '--cpu-smoke' in sys.argv else ab() if '--ab' in sys.argv else main()
