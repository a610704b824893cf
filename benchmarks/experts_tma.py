"""Prototype: TMA (tensor-descriptor) grouped GEMMs for the expert path, against the current pointer kernels.

Shapes: the end-to-end Qwen3 step (16384 tokens, k 8, E 128, H 2048, I 768) and `small` (E 64, H 1024, I 512).
Kernels: wgrad dW = A[rows of e]ᵀ B[rows of e] with A, B read by TMA in whole BK-row blocks and a masked pointer tail;
grouped GEMM c[rows] = a[rows] @ w[e] (plain, or the SwiGLU-backward epilogue) with a and w read by TMA. Optional
persistent grid. Prints µs, TFLOP/s and the relative error against the current kernels (which the tests check).

    PYTHONPATH=$PWD python3 benchmarks/experts_tma.py [--quick]     # GPU; TRITON_INTERPRET=1 runs a tiny self-test
"""
import os, sys, json, datetime, itertools
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch, triton, triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor
from pithtrain import experts as X
from pithtrain.dispatch import make_plan

@triton.jit
def _wgrad_tma_kernel(a_d, b_d, a, b, offs, dw, E, KO, NO, sa_m, sb_m, sw_e, sw_k, NPROG,
                      BM:tl.constexpr, BN:tl.constexpr, BK:tl.constexpr):
    nm, nn = tl.cdiv(KO, BM), tl.cdiv(NO, BN)
    for tile in range(tl.program_id(0), E * nm * nn, NPROG):
        e, t = tile // (nm * nn), tile % (nm * nn)
        pm, pn = t // nn, t % nn
        lo, hi = tl.load(offs + e), tl.load(offs + e + 1)
        rk, rn = pm * BM + tl.arange(0, BM), pn * BN + tl.arange(0, BN)
        acc = tl.zeros((BM, BN), tl.float32)
        nfull = (hi - lo) // BK
        for i in range(nfull):
            r0 = lo + i * BK
            acc = tl.dot(tl.trans(a_d.load([r0, pm * BM])), b_d.load([r0, pn * BN]), acc)
        r0 = lo + nfull * BK
        if r0 < hi:
            rows = r0 + tl.arange(0, BK)
            rmask = rows < hi
            at = tl.load(a + rows.to(tl.int64)[None, :] * sa_m + rk[:, None], mask=rmask[None, :] & (rk < KO)[:, None], other=0.0)
            bt = tl.load(b + rows.to(tl.int64)[:, None] * sb_m + rn[None, :], mask=rmask[:, None] & (rn < NO)[None, :], other=0.0)
            acc = tl.dot(at, bt, acc)
        omask = (rk < KO)[:, None] & (rn < NO)[None, :]
        tl.store(dw + e.to(tl.int64) * sw_e + rk[:, None] * sw_k + rn[None, :], acc.to(dw.dtype.element_ty), mask=omask)

def wgrad_tma(a, b, offs, dw, BM, BN, BK, warps, stages, persistent=False):
    E, KO, NO = dw.shape
    ad, bd = TensorDescriptor.from_tensor(a, [BK, BM]), TensorDescriptor.from_tensor(b, [BK, BN])
    tiles = E * triton.cdiv(KO, BM) * triton.cdiv(NO, BN)
    n = min(tiles, NSM) if persistent else tiles
    _wgrad_tma_kernel[(n,)](ad, bd, a, b, offs, dw, E, KO, NO, a.stride(0), b.stride(0), dw.stride(0), dw.stride(1), n,
                            BM=BM, BN=BN, BK=BK, num_warps=warps, num_stages=stages)
    return dw

@triton.jit
def _gmm_tma_kernel(a_d, w_d, offs, c, aux, E, K, NO, I, NPROG, N_M, sc_m, sx_m,
                    ACT:tl.constexpr, TW:tl.constexpr, EP2:tl.constexpr, BM:tl.constexpr, BN:tl.constexpr, BK:tl.constexpr):
    nt = tl.cdiv(NO, BN)
    for pid in range(tl.program_id(0), N_M * nt, NPROG):
        pid_m, pid_n = pid // nt, pid % nt
        e, row0, rend = X._expert_tile(offs, E, pid_m, BM, EP2)
        if row0 < rend:
            acc = tl.zeros((BM, BN), tl.float32)
            accu = tl.zeros((BM, BN), tl.float32)
            for k0 in range(0, K, BK):
                at = a_d.load([row0, k0])
                if ACT == 1:   # gate and up columns of w1 viewed (E·K, 2I)
                    acc = tl.dot(at, w_d.load([e * K + k0, pid_n * BN]), acc)
                    accu = tl.dot(at, w_d.load([e * K + k0, I + pid_n * BN]), accu)
                elif TW: bt = tl.trans(w_d.load([e * NO + pid_n * BN, k0]))   # w viewed (E·NO, K): B = w[e]ᵀ
                else: bt = w_d.load([e * K + k0, pid_n * BN])              # w viewed (E·K, NO)
                if ACT != 1: acc = tl.dot(at, bt, acc)
            rm, rn = row0 + tl.arange(0, BM), pid_n * BN + tl.arange(0, BN)
            omask = (rm < rend)[:, None] & (rn < NO)[None, :]
            cm = c + rm.to(tl.int64)[:, None] * sc_m
            if ACT == 0:
                tl.store(cm + rn[None, :], acc.to(c.dtype.element_ty), mask=omask)
            elif ACT == 1:
                tl.store(cm + rn[None, :], X._act_fwd(acc, accu, 1.0, 0.0, False).to(c.dtype.element_ty), mask=omask)
                xm = aux + rm.to(tl.int64)[:, None] * sx_m
                tl.store(xm + rn[None, :], acc.to(aux.dtype.element_ty), mask=omask)
                tl.store(xm + rn[None, :] + I, accu.to(aux.dtype.element_ty), mask=omask)
            else:
                xm = aux + rm.to(tl.int64)[:, None] * sx_m
                g = tl.load(xm + rn[None, :], mask=omask, other=0.0).to(tl.float32)
                u = tl.load(xm + rn[None, :] + I, mask=omask, other=0.0).to(tl.float32)
                dg, du = X._act_bwd(acc, g, u, 1.0, 0.0, False)
                tl.store(cm + rn[None, :], dg.to(c.dtype.element_ty), mask=omask)
                tl.store(cm + rn[None, :] + I, du.to(c.dtype.element_ty), mask=omask)

def gmm_tma(a, w, offs, c, aux, act, trans_w, BM, BN, BK, warps, stages, persistent=False):
    "c[rows] = a[rows] @ w[e] (trans_w: @ w[e]ᵀ); act 2: dh→(dg, du) epilogue with aux = gu."
    N, K = a.shape
    E = w.shape[0]
    NO = w.shape[1] if trans_w else w.shape[2] // (2 if act == 1 else 1)
    w2d = w.reshape(-1, w.shape[2])
    ad = TensorDescriptor.from_tensor(a, [BM, BK])
    wd = TensorDescriptor.from_tensor(w2d, [BN, BK] if trans_w else [BK, BN])
    n_m = triton.cdiv(N, BM) + E
    tiles = n_m * triton.cdiv(NO, BN)
    n = min(tiles, NSM * 2) if persistent else tiles
    I = aux.shape[1] // 2 if aux is not None else 0
    _gmm_tma_kernel[(n,)](ad, wd, offs, c, aux if aux is not None else c, E, K, NO, I, n, n_m, c.stride(0),
                          aux.stride(0) if aux is not None else 0, ACT=act, TW=trans_w, EP2=triton.next_power_of_2(E),
                          BM=BM, BN=BN, BK=BK, num_warps=warps, num_stages=stages)
    return c

def main(quick=False):
    global NSM
    interp = os.environ.get('TRITON_INTERPRET') == '1'
    dev = 'cpu' if interp else 'cuda'
    NSM = 4 if interp else torch.cuda.get_device_properties(0).multi_processor_count
    if interp: shapes = {'tiny': (64, 4, 8, 64, 32)}
    else: shapes = {'qwen3': (16384, 8, 128, 2048, 768), 'small': (16384, 8, 64, 1024, 512)}
    bf = torch.float16 if interp else torch.bfloat16
    res = dict(date=datetime.date.today().isoformat(), device='interpreter' if interp else torch.cuda.get_device_name(),
               command='python3 benchmarks/experts_tma.py', rows=[])
    from triton.testing import do_bench
    def us(fn):
        if interp: fn(); return float('nan')
        fn(); torch.cuda.synchronize(); return do_bench(fn, warmup=5, rep=40, return_mode='median') * 1e3
    def rec(shape, name, fn, ref, flop):
        try:
            out = fn(); t = us(fn)
            err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
            row = dict(shape=shape, name=name, us=round(t, 1), tflops=round(flop / t / 1e6, 1), rel_err=err)
        except Exception as ex: row = dict(shape=shape, name=name, error=repr(ex)[:400])
        res['rows'].append(row); print(row, flush=True)
    for sname, (T, k, E, H, I) in shapes.items():
        torch.manual_seed(0)
        ids = torch.stack([torch.randperm(E, device=dev)[:k] for _ in range(T)])
        if interp: ids[:, 0] = 0   # one expert with many rows, awkward tails
        plan = make_plan(ids, E)
        N = plan.token_idx.numel()
        offs = plan.offsets.to(torch.int32)
        x = torch.randn(T, H, device=dev, dtype=bf)
        xg = x[plan.token_idx].contiguous()
        dgu = torch.randn(N, 2 * I, device=dev, dtype=bf) * 0.1
        gu = torch.randn(N, 2 * I, device=dev, dtype=bf)
        h = torch.randn(N, I, device=dev, dtype=bf)
        dy = torch.randn(N, H, device=dev, dtype=bf) * 0.1
        w1 = torch.randn(E, H, 2 * I, device=dev, dtype=bf) * 0.02
        w2 = torch.randn(E, I, H, device=dev, dtype=bf) * 0.02
        f1, f2 = 2 * N * H * 2 * I, 2 * N * I * H
        dw1 = torch.empty(E, H, 2 * I, device=dev); dw2 = torch.empty(E, I, H, device=dev)
        # references: the current kernels
        r1 = X._wgrad(x, plan.token_idx, dgu, offs, dw1.clone(), None)
        r2 = X._wgrad(h, None, dy, offs, dw2.clone(), None)
        rec(sname, 'dW1 current (gather)', lambda: X._wgrad(x, plan.token_idx, dgu, offs, dw1, None), r1, f1)
        rec(sname, 'dW1 current (pre-gathered)', lambda: X._wgrad(xg, None, dgu, offs, dw1, None), r1, f1)
        rec(sname, 'dW2 current', lambda: X._wgrad(h, None, dy, offs, dw2, None), r2, f2)
        mk = lambda: torch.empty(N, H, device=dev, dtype=bf)
        ry = X._launch(X._mm, h, None, offs, w2, None, mk(), None, I, H, I, w2.stride(2), w2.stride(1), 0)
        rx = X._launch(X._mm, dgu, None, offs, w1, None, mk(), None, 2 * I, H, I, w1.stride(1), w1.stride(2), 0)
        rdg = X._launch(X._dh, dy, None, offs, w2, None, torch.empty_like(gu), gu, H, I, I, w2.stride(1), w2.stride(2), 2)
        rh, rgu = torch.empty(N, I, device=dev, dtype=bf), torch.empty_like(gu)
        X._launch(X._fc1, x, plan.token_idx, offs, w1, None, rh, rgu, H, I, I, w1.stride(2), w1.stride(1), 1)
        hh, ggu = torch.empty_like(rh), torch.empty_like(gu)
        rec(sname, 'fc1 current (gather)', lambda: X._launch(X._fc1, x, plan.token_idx, offs, w1, None, hh, ggu, H, I, I, w1.stride(2), w1.stride(1), 1), rh, f1)
        rec(sname, 'gather x alone', lambda: x[plan.token_idx], xg, 0)
        rec(sname, 'fc2 current', lambda: X._launch(X._mm, h, None, offs, w2, None, mk(), None, I, H, I, w2.stride(2), w2.stride(1), 0), ry, f2)
        rec(sname, 'dx current', lambda: X._launch(X._mm, dgu, None, offs, w1, None, mk(), None, 2 * I, H, I, w1.stride(1), w1.stride(2), 0), rx, f1)
        rec(sname, 'dh current', lambda: X._launch(X._dh, dy, None, offs, w2, None, torch.empty_like(gu), gu, H, I, I, w2.stride(1), w2.stride(2), 2), rdg, f2)
        if interp: wcfg = [(32, 32, 16, 4, 2)]; gcfg = wcfg
        elif quick: wcfg = [(128, 128, 64, 8, 4)]; gcfg = [(128, 128, 64, 8, 4)]
        else:
            wcfg = [(128, 128, 64, 8, 4), (128, 128, 64, 4, 4), (128, 256, 64, 8, 3), (256, 128, 64, 8, 3), (64, 128, 64, 4, 5),
                    (128, 64, 64, 4, 5), (128, 128, 32, 8, 5), (128, 128, 128, 8, 3)]
            gcfg = [(128, 128, 64, 8, 4), (128, 128, 64, 4, 4), (128, 256, 64, 8, 3), (64, 128, 64, 4, 5), (128, 64, 64, 4, 5),
                    (128, 128, 128, 8, 3), (128, 256, 64, 8, 4)]
        for (BM, BN, BK, wn, st), pers in itertools.product(wcfg, (False, True)):
            tag = f"{BM}x{BN}x{BK} w{wn} s{st}{' persistent' if pers else ''}"
            rec(sname, f'dW1 tma pre-gathered {tag}', lambda: wgrad_tma(xg, dgu, offs, dw1, BM, BN, BK, wn, st, pers), r1, f1)
            rec(sname, f'dW2 tma {tag}', lambda: wgrad_tma(h, dy, offs, dw2, BM, BN, BK, wn, st, pers), r2, f2)
        for (BM, BN, BK, wn, st), pers in itertools.product(gcfg, (False, True)):
            tag = f"{BM}x{BN}x{BK} w{wn} s{st}{' persistent' if pers else ''}"
            rec(sname, f'fc1 tma pre-gathered {tag}', lambda: (gmm_tma(xg, w1, offs, hh, ggu, 1, False, BM, BN, BK, wn, st, pers), hh)[1], rh, f1)
            rec(sname, f'fc2 tma {tag}', lambda: gmm_tma(h, w2, offs, mk(), None, 0, False, BM, BN, BK, wn, st, pers), ry, f2)
            rec(sname, f'dx tma {tag}', lambda: gmm_tma(dgu, w1, offs, mk(), None, 0, True, BM, BN, BK, wn, st, pers), rx, f1)
            rec(sname, f'dh tma {tag}', lambda: gmm_tma(dy, w2, offs, torch.empty_like(gu), gu, 2, True, BM, BN, BK, wn, st, pers), rdg, f2)
    out = os.environ.get('OUT')
    if out: json.dump(res, open(os.path.join(out, 'experts_tma.json'), 'w'), indent=1)
    return res

if __name__ == '__main__': main('--quick' in sys.argv)
