"""Prototype for the next expert-kernel round: fc1 (gate/up GEMM + SwiGLU, stores h·w, g and u) with its epilogue's
stores through TMA (tensor-descriptor stores, asynchronous; whole tiles only, the last tile of each expert stays
masked because its tail rows belong to the next expert), one program per tile or persistent (no loop flattening),
against pithtrain's `_fc1` at the e2e step shapes.

Why: fc1 is the slowest expert GEMM per FLOP (≈ 470–510 TFLOP/s against ≈ 620–640 for the plain products on the
same tiles) and round 7 of `NOTES-experts.md` showed it is not its main loop: its epilogue writes 1.5× a plain
product's bytes (h, g, u) with masked pointer stores from a kernel whose programs do not overlap.

    python3 benchmarks/fc1_epilogue.py                  # GPU: µs per variant and tile, rel. error vs `_fc1`; $OUT/fc1_epilogue.json
    TRITON_INTERPRET=1 python3 benchmarks/fc1_epilogue.py --cpu-smoke   # CPU: checks every variant's output only

Status 2026-11-29: run on the H200 (NOTES-experts.md round 8): TMA stores win per tile (547 vs 568 µs small, 1421 vs 1532 Qwen3),
persistence adds nothing; the per-tile TMA-store epilogue is now in `03_experts` (`_gmm_kernel`, `TS`).
"""
import os, sys, json, datetime, argparse
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch, triton, triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor
from pithtrain import experts as X
from pithtrain.core import rel_err
from pithtrain.dispatch import make_plan

@triton.jit
def _fc1_tile(a_d, w_d, h_d, g_d, c, aux, rw, e, row0, rend, pid_n, K, I, sc_m, sx_m,
              TMA_STORE:tl.constexpr, BM:tl.constexpr, BN:tl.constexpr, BK:tl.constexpr):
    "One (BM, BN) tile of h = silu(g)·u·rw and of g, u (w1 (E·K, 2I) through `w_d`, rows through `a_d`)."
    accg = tl.zeros((BM, BN), tl.float32)
    accu = tl.zeros((BM, BN), tl.float32)
    for k0 in range(0, K, BK):
        at = a_d.load([row0, k0])
        accg = tl.dot(at, w_d.load([e * K + k0, pid_n * BN]), accg)
        accu = tl.dot(at, w_d.load([e * K + k0, I + pid_n * BN]), accu)
    rm = row0 + tl.arange(0, BM)
    rl = tl.minimum(rm, rend - 1)
    h = accg * tl.sigmoid(accg) * accu * tl.load(rw + rl).to(tl.float32)[:, None]
    if TMA_STORE and row0 + BM <= rend and (pid_n + 1) * BN <= I:   # a whole tile of this expert's rows
        h_d.store([row0, pid_n * BN], h.to(c.dtype.element_ty))
        g_d.store([row0, pid_n * BN], accg.to(aux.dtype.element_ty))
        g_d.store([row0, I + pid_n * BN], accu.to(aux.dtype.element_ty))
    else:
        rn = pid_n * BN + tl.arange(0, BN)
        m = (rm < rend)[:, None] & (rn < I)[None, :]
        r64 = rm.to(tl.int64)[:, None]
        tl.store(c + r64 * sc_m + rn[None, :], h.to(c.dtype.element_ty), mask=m)
        tl.store(aux + r64 * sx_m + rn[None, :], accg.to(aux.dtype.element_ty), mask=m)
        tl.store(aux + r64 * sx_m + I + rn[None, :], accu.to(aux.dtype.element_ty), mask=m)

@triton.jit
def _fc1_kernel(a_d, w_d, h_d, g_d, offs, c, aux, rw, E, K, I, sc_m, sx_m, NPROG,
                TMA_STORE:tl.constexpr, PERSIST:tl.constexpr, EP2:tl.constexpr, BM:tl.constexpr, BN:tl.constexpr, BK:tl.constexpr):
    "fc1 over all experts: one program per tile, or (PERSIST) NPROG programs walking the tiles."
    n_tiles = tl.cdiv(I, BN)
    if PERSIST:
        e_, lo, hi, tiles, ends = X._expert_rows(offs, E, BM, EP2)
        for t in tl.range(tl.program_id(0), tl.sum(tiles, 0) * n_tiles, NPROG):
            e, row0, rend = X._tile_rows(e_, lo, hi, tiles, ends, t // n_tiles, BM)
            _fc1_tile(a_d, w_d, h_d, g_d, c, aux, rw, e, row0, rend, t % n_tiles, K, I, sc_m, sx_m, TMA_STORE, BM, BN, BK)
    else:
        pid = tl.program_id(0)
        e, row0, rend = X._expert_tile(offs, E, pid // n_tiles, BM, EP2)
        if row0 < rend:
            _fc1_tile(a_d, w_d, h_d, g_d, c, aux, rw, e, row0, rend, pid % n_tiles, K, I, sc_m, sx_m, TMA_STORE, BM, BN, BK)

def fc1(xg, offs, w1, rw, h, gu, cfg, tma_store, persist, nprog):
    "Launch the prototype with tile `cfg` = (BM, BN, BK, warps, stages)."
    BM, BN, BK, warps, stages = cfg
    E, K, I2 = w1.shape; I, N = I2 // 2, xg.shape[0]
    d = lambda t, b: TensorDescriptor(t, list(t.shape), list(t.stride()), b)
    args = (d(xg, [BM, BK]), d(w1.view(E * K, I2), [BK, BN]), d(h, [BM, BN]), d(gu, [BM, BN]), offs, h, gu, rw, E, K, I,
            h.stride(0), gu.stride(0), nprog)
    grid = (nprog,) if persist else ((triton.cdiv(N, BM) + E) * triton.cdiv(I, BN),)
    _fc1_kernel[grid](*args, TMA_STORE=tma_store, PERSIST=persist, EP2=triton.next_power_of_2(E), BM=BM, BN=BN, BK=BK,
                      num_warps=warps, num_stages=stages)

def main():
    ap = argparse.ArgumentParser(); ap.add_argument('--cpu-smoke', action='store_true')
    a = ap.parse_args()
    dev, bf = ('cpu', torch.float32) if a.cpu_smoke else ('cuda', torch.bfloat16)
    shapes = {'tiny': (80, 2, 5, 64, 64)} if a.cpu_smoke else {'small': (16384, 8, 64, 1024, 512), 'qwen3': (16384, 8, 128, 2048, 768)}
    cfgs = [(32, 32, 32, 4, 1)] if a.cpu_smoke else [(128, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 64, 64, 4, 4)]
    rows = []
    for name, (T, k, E, H, I) in shapes.items():
        torch.manual_seed(0)
        ids = torch.stack([torch.randperm(E)[:k] for _ in range(T)]).to(dev)
        if a.cpu_smoke: ids[: 3 * T // 4] = torch.arange(k)   # uneven: experts 0, 1 hold whole 32-row tiles and a partial one
        plan = make_plan(ids, E); offs = plan.offsets.to(torch.int32)
        N = plan.token_idx.numel()
        xg = torch.randn(N, H, device=dev).to(bf)
        w1 = (torch.randn(E, H, 2 * I, device=dev) * H ** -0.5).to(bf)
        rw = torch.rand(N, device=dev)
        h0, gu0 = torch.empty(N, I, device=dev, dtype=bf), torch.empty(N, 2 * I, device=dev, dtype=bf)
        prod = lambda: X._launch(X._fc1, xg, None, offs, w1, None, h0, gu0, H, I, I, w1.stride(2), w1.stride(1), 1, rw=rw)
        prod()
        nprog = 4 if a.cpu_smoke else torch.cuda.get_device_properties(0).multi_processor_count
        r = dict(shape=name, N=N, H=H, I=I, E=E)
        if not a.cpu_smoke: r['pithtrain_fc1_us'] = triton.testing.do_bench(prod, warmup=10, rep=100, return_mode='median') * 1e3
        for cfg in cfgs:
            for tma_store in (False, True):
                for persist in (False, True):
                    h, gu = torch.full_like(h0, float('nan')), torch.full_like(gu0, float('nan'))
                    f = lambda: fc1(xg, offs, w1, rw, h, gu, cfg, tma_store, persist, nprog)
                    f()
                    key = f"{'x'.join(map(str, cfg))}{'-tma' if tma_store else ''}{'-persist' if persist else ''}"
                    err = max(rel_err(h, h0), rel_err(gu, gu0))
                    r[key + '_relerr'] = err
                    if not a.cpu_smoke: r[key + '_us'] = triton.testing.do_bench(f, warmup=10, rep=100, return_mode='median') * 1e3
                    print(f"{name:6s} {key:34s} relerr {err:.1e}" + ('' if a.cpu_smoke else f"  {r[key + '_us']:7.1f} us (fc1 now {r['pithtrain_fc1_us']:.1f})"), flush=True)
                    assert err < 1e-2, (name, key, err)
        rows.append(r)
    out = os.environ.get('OUT')
    if out and not a.cpu_smoke:
        json.dump(dict(date=datetime.date.today().isoformat(), device=torch.cuda.get_device_name(), command='python3 benchmarks/fc1_epilogue.py',
                       rows=rows), open(os.path.join(out, 'fc1_epilogue.json'), 'w'), indent=1)

if __name__ == '__main__': main()
