"""Prototype: a persistent grouped GEMM (one program per SM looping over the tiles, TMA loads, loop flattening so the
next tile's loads overlap this tile's epilogue) against pithtrain's `_gmm_kernel` (one program per tile), at the
end-to-end shapes (16384 tokens, k 8): fc1 (gate/up + SwiGLU), fc2, dh (dy @ w2[e]ᵀ) and dx (dgu @ w1[e]ᵀ).

    PYTHONPATH=$PWD python3 benchmarks/gmm_persistent.py        # GPU; writes $OUT/gmm_persistent.json when $OUT is set
    PYTHONPATH=$PWD python3 benchmarks/gmm_persistent.py --ws   # warp-specialised variants (tl.range(warp_specialize=True))
                                                                  # of the plain products and a persistent weight gradient instead
"""
import os, sys, json, datetime
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch, triton, triton.language as tl
from triton.testing import do_bench
from triton.tools.tensor_descriptor import TensorDescriptor
from pithtrain import experts as X
from experts_sweep import SHAPES, LAYERS, routing

@triton.jit
def _pgmm_kernel(a_d, w_d, offs, c, aux, E, K, NO, I, sc_m, sx_m, NUM_PROGS,
                 ACT:tl.constexpr, TW:tl.constexpr, FLAT:tl.constexpr, WS:tl.constexpr, EP2:tl.constexpr,
                 BM:tl.constexpr, BN:tl.constexpr, BK:tl.constexpr):
    "Persistent grouped GEMM: program p does tiles p, p + NUM_PROGS, ...; ACT 1: gate/up dots, SwiGLU, h and gu stored."
    pid = tl.program_id(0)
    e_ = tl.arange(0, EP2)
    lo = tl.load(offs + e_, mask=e_ < E, other=0)
    hi = tl.load(offs + e_ + 1, mask=e_ < E, other=0)
    tiles = (hi - lo + BM - 1) // BM
    ends = tl.cumsum(tiles, 0)
    n_tiles = tl.cdiv(NO, BN)
    total = tl.sum(tiles, 0) * n_tiles
    for t in tl.range(pid, total, NUM_PROGS, flatten=FLAT):
        pid_m, pid_n = t // n_tiles, t % n_tiles
        e = tl.sum((ends <= pid_m).to(tl.int32), 0)
        here = e_ == e
        row0 = tl.sum(tl.where(here, lo + (pid_m - (ends - tiles)) * BM, 0), 0)
        rend = tl.sum(tl.where(here, hi, 0), 0)
        if ACT == 1:
            accg = tl.zeros((BM, BN), tl.float32)
            accu = tl.zeros((BM, BN), tl.float32)
            for k0 in range(0, K, BK):
                at = a_d.load([row0, k0])
                accg = tl.dot(at, w_d.load([e * K + k0, pid_n * BN]), accg)
                accu = tl.dot(at, w_d.load([e * K + k0, I + pid_n * BN]), accu)
        else:
            acc = tl.zeros((BM, BN), tl.float32)
            for k0 in tl.range(0, K, BK, warp_specialize=WS):
                at = a_d.load([row0, k0])
                bt = tl.trans(w_d.load([e * NO + pid_n * BN, k0])) if TW else w_d.load([e * K + k0, pid_n * BN])
                acc = tl.dot(at, bt, acc)
        rm = row0 + tl.arange(0, BM)
        rn = pid_n * BN + tl.arange(0, BN)
        om = (rm < rend)[:, None] & (rn < NO)[None, :]
        cm = c + rm.to(tl.int64)[:, None] * sc_m + rn[None, :]
        if ACT == 1:
            tl.store(cm, (accg * tl.sigmoid(accg) * accu).to(c.dtype.element_ty), mask=om)
            xm = aux + rm.to(tl.int64)[:, None] * sx_m + rn[None, :]
            tl.store(xm, accg.to(aux.dtype.element_ty), mask=om)
            tl.store(xm + I, accu.to(aux.dtype.element_ty), mask=om)
        else:
            tl.store(cm, acc.to(c.dtype.element_ty), mask=om)

NSM = None
WS_ONLY = '--ws' in sys.argv   # only the warp-specialised variants of the plain products (and the weight gradients)
def pgmm(a, offs, w, c, aux, K, NO, I, act, tw, cfg, flat, ws=False):
    "Launch the persistent kernel with cfg = (BM, BN, BK, warps, stages)."
    bm, bn, bk, nw, ns = cfg
    E = w.shape[0]
    wv = w.view(-1, w.shape[-1])
    a_d = TensorDescriptor(a, list(a.shape), list(a.stride()), [bm, bk])
    w_d = TensorDescriptor(wv, list(wv.shape), list(wv.stride()), [bn, bk] if tw else [bk, bn])
    _pgmm_kernel[(NSM,)](a_d, w_d, offs, c, aux if aux is not None else c, E, K, NO, I, c.stride(0),
                         aux.stride(0) if aux is not None else 0, NSM, ACT=act, TW=tw, FLAT=flat, WS=ws,
                         EP2=triton.next_power_of_2(E), BM=bm, BN=bn, BK=bk, num_warps=nw, num_stages=ns)
    return c

@triton.jit
def _pwg_kernel(a, b, a_d, b_d, offs, dw, E, KO, NO, sa_m, sb_m, NPROG, FLAT:tl.constexpr, BM:tl.constexpr, BN:tl.constexpr, BK:tl.constexpr):
    "Persistent weight gradient dw[e] = a[rows of e]ᵀ b[rows of e]: whole BK-row blocks by TMA, the partial block masked."
    nm, nn = tl.cdiv(KO, BM), tl.cdiv(NO, BN)
    for t in tl.range(tl.program_id(0), E * nm * nn, NPROG, flatten=FLAT):
        e, r = t // (nm * nn), t % (nm * nn)
        pm, pn = r // nn, r % nn
        lo, hi = tl.load(offs + e), tl.load(offs + e + 1)
        acc = tl.zeros((BM, BN), tl.float32)
        for i in range((hi - lo) // BK):
            acc = tl.dot(tl.trans(a_d.load([lo + i * BK, pm * BM])), b_d.load([lo + i * BK, pn * BN]), acc)
        r0 = lo + (hi - lo) // BK * BK
        rows = r0 + tl.arange(0, BK)
        rk = pm * BM + tl.arange(0, BM)
        rn = pn * BN + tl.arange(0, BN)
        if r0 < hi:
            at = tl.load(a + rows.to(tl.int64)[None, :] * sa_m + rk[:, None], mask=(rows < hi)[None, :], other=0.0)
            bt = tl.load(b + rows.to(tl.int64)[:, None] * sb_m + rn[None, :], mask=(rows < hi)[:, None], other=0.0)
            acc = tl.dot(at, bt, acc)
        tl.store(dw + e.to(tl.int64) * KO * NO + rk[:, None] * NO + rn[None, :], acc, mask=(rk < KO)[:, None] & (rn < NO)[None, :])

def pwg(a, b, offs, dw, cfg, flat):
    bm, bn, bk, nw, ns = cfg
    E, KO, NO = dw.shape
    a_d = TensorDescriptor(a, list(a.shape), list(a.stride()), [bk, bm])
    b_d = TensorDescriptor(b, list(b.shape), list(b.stride()), [bk, bn])
    _pwg_kernel[(NSM,)](a, b, a_d, b_d, offs, dw, E, KO, NO, a.stride(0), b.stride(0), NSM, FLAT=flat, BM=bm, BN=bn, BK=bk,
                        num_warps=nw, num_stages=ns)
    return dw

WG_CFGS = [(128, 128, 64, 8, 4), (128, 256, 64, 8, 3), (128, 128, 32, 8, 5), (256, 128, 64, 8, 3)]

CFGS = [(128, 256, 64, 8, 3), (128, 256, 64, 8, 4), (128, 128, 64, 8, 4), (128, 128, 64, 4, 4), (128, 128, 64, 8, 5),
        (128, 128, 128, 8, 3), (256, 128, 64, 8, 3), (128, 64, 64, 4, 4)]

def main():
    global NSM
    dev, bf = 'cuda', torch.bfloat16
    NSM = torch.cuda.get_device_properties(0).multi_processor_count
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device=dev))
    res = dict(date=datetime.date.today().isoformat(), device=torch.cuda.get_device_name(),
               command='python3 benchmarks/gmm_persistent.py', rows=[])
    for sname, (T, k, E, H, I) in SHAPES.items():
        plan, offs = routing(T, k, E)
        N = plan.token_idx.numel()
        xg = torch.randn(T, H, device=dev, dtype=bf)[plan.token_idx].contiguous()
        dgu, h = torch.randn(N, 2 * I, device=dev, dtype=bf) * 0.1, torch.randn(N, I, device=dev, dtype=bf)
        dy = torch.randn(N, H, device=dev, dtype=bf) * 0.1
        w1, w2 = torch.randn(E, H, 2 * I, device=dev, dtype=bf) * 0.02, torch.randn(E, I, H, device=dev, dtype=bf) * 0.02
        nh, ngu = torch.empty(N, I, device=dev, dtype=bf), torch.empty(N, 2 * I, device=dev, dtype=bf)
        ny, ndh = torch.empty(N, H, device=dev, dtype=bf), torch.empty(N, I, device=dev, dtype=bf)
        f1, f2 = 2 * N * H * 2 * I, 2 * N * I * H
        # (name, current launch, persistent launch(cfg, flat), output, flop)
        cases = [('fc1', lambda: X._launch(X._fc1, xg, None, offs, w1, None, nh, ngu, H, I, I, w1.stride(2), w1.stride(1), 1),
                  lambda cf, fl, ws: pgmm(xg, offs, w1, nh, ngu, H, I, I, 1, False, cf, fl, ws), nh, f1),
                 ('fc2', lambda: X._launch(X._mm, h, None, offs, w2, None, ny, None, I, H, I, w2.stride(2), w2.stride(1), 0),
                  lambda cf, fl, ws: pgmm(h, offs, w2, ny, None, I, H, I, 0, False, cf, fl, ws), ny, f2),
                 ('dh', lambda: X._launch(X._mm, dy, None, offs, w2, None, ndh, None, H, I, I, w2.stride(1), w2.stride(2), 0),
                  lambda cf, fl, ws: pgmm(dy, offs, w2, ndh, None, H, I, I, 0, True, cf, fl, ws), ndh, f2),
                 ('dx', lambda: X._launch(X._mm, dgu, None, offs, w1, None, ny, None, 2 * I, H, I, w1.stride(1), w1.stride(2), 0),
                  lambda cf, fl, ws: pgmm(dgu, offs, w1, ny, None, 2 * I, H, I, 0, True, cf, fl, ws), ny, f1)]
        for what, cur, per, out, flop in cases:
            out.fill_(float('nan')); cur(); ref = out.float().clone()
            t = do_bench(cur, warmup=5, rep=40, return_mode='median') * 1e3
            row = dict(shape=sname, gemm=what, kernel='current', us=round(t, 1), tflops=round(flop / t / 1e6, 1))
            res['rows'].append(row); print(row, flush=True)
            variants = [] if WS_ONLY else [(cf, fl, False) for cf in CFGS for fl in (True, False)]
            if what != 'fc1': variants += [(cf, False, True) for cf in CFGS[:4]]
            for cf, fl, ws in variants:
                if True:
                    try:
                        out.fill_(float('nan')); per(cf, fl, ws); torch.cuda.synchronize()
                        err = ((out.float() - ref).norm() / ref.norm()).item()
                        t = do_bench(lambda: per(cf, fl, ws), warmup=5, rep=40, return_mode='median') * 1e3
                        row = dict(shape=sname, gemm=what, kernel='persistent', cfg=cf, flat=fl, ws=ws, us=round(t, 1),
                                   tflops=round(flop / t / 1e6, 1), rel_err=err)
                    except Exception as ex: row = dict(shape=sname, gemm=what, cfg=cf, flat=fl, ws=ws, error=repr(ex)[:300])
                    res['rows'].append(row); print(row, flush=True)
        dw1, dw2 = torch.empty(E, H, 2 * I, device=dev), torch.empty(E, I, H, device=dev)
        for what, cur, per, out, flop in [('dW1', lambda: X._wgrad(xg, None, dgu, offs, dw1, None), lambda cf, fl: pwg(xg, dgu, offs, dw1, cf, fl), dw1, f1),
                                          ('dW2', lambda: X._wgrad(h, None, dy, offs, dw2, None), lambda cf, fl: pwg(h, dy, offs, dw2, cf, fl), dw2, f2)]:
            out.fill_(float('nan')); cur(); ref = out.float().clone()
            t = do_bench(cur, warmup=5, rep=40, return_mode='median') * 1e3
            row = dict(shape=sname, gemm=what, kernel='current', us=round(t, 1), tflops=round(flop / t / 1e6, 1))
            res['rows'].append(row); print(row, flush=True)
            for cf in WG_CFGS:
                for fl in (True, False):
                    try:
                        out.fill_(float('nan')); per(cf, fl); torch.cuda.synchronize()
                        err = ((out.float() - ref).norm() / ref.norm()).item()
                        t = do_bench(lambda: per(cf, fl), warmup=5, rep=40, return_mode='median') * 1e3
                        row = dict(shape=sname, gemm=what, kernel='persistent', cfg=cf, flat=fl, us=round(t, 1),
                                   tflops=round(flop / t / 1e6, 1), rel_err=err)
                    except Exception as ex: row = dict(shape=sname, gemm=what, cfg=cf, flat=fl, error=repr(ex)[:300])
                    res['rows'].append(row); print(row, flush=True)
    out = os.environ.get('OUT')
    if out: json.dump(res, open(os.path.join(out, 'gmm_persistent.json'), 'w'), indent=1)

if __name__ == '__main__': main()
