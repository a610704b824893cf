"""The SwiGLU-backward pass of the split path (`experts._act_bwd_kernel`, routing weights folded in: it also sums each row's
dh·act(gu)) at the end-to-end shapes, over its row-block tiles (BR rows × BI columns, warps), against the elementwise
pass it replaced (no row sum).

    PYTHONPATH=$PWD python3 benchmarks/act_bwd_tiles.py   # GPU; prints µs and GB/s per tile
"""
import os, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch, triton, triton.language as tl
from triton.testing import do_bench
from pithtrain import experts as X

@triton.jit
def _flat_kernel(dh, gu, dgu, n, I, BLOCK:tl.constexpr):
    "The elementwise pass before the weights were folded in (no row sum)."
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    r, j = i // I, i % I
    d = tl.load(dh + i, mask=m, other=0.0).to(tl.float32)
    dg, du = X._act_bwd(d, tl.load(gu + r * 2 * I + j, mask=m, other=0.0).to(tl.float32),
                        tl.load(gu + r * 2 * I + j + I, mask=m, other=0.0).to(tl.float32), 1.0, 0.0, False)
    tl.store(dgu + r * 2 * I + j, dg.to(dgu.dtype.element_ty), mask=m)
    tl.store(dgu + r * 2 * I + j + I, du.to(dgu.dtype.element_ty), mask=m)

def main():
    dev, bf = 'cuda', torch.bfloat16
    for name, N, I in (('small', 131072, 512), ('qwen3', 131072, 768)):
        dh, gu = torch.randn(N, I, device=dev, dtype=bf), torch.randn(N, 2 * I, device=dev, dtype=bf)
        rw, drw, dgu = torch.rand(N, device=dev), torch.empty(N, device=dev), torch.empty(N, 2 * I, device=dev, dtype=bf)
        gb = (N * I * 2 + N * 2 * I * 2 * 2) / 1e9
        t = do_bench(lambda: _flat_kernel[(triton.cdiv(N * I, 1024),)](dh, gu, dgu, N * I, I, BLOCK=1024), warmup=5, rep=50, return_mode='median')
        print(f'{name} I={I}: elementwise (no row sum) {t * 1e3:.1f} us {gb / t * 1e3:.2f} GB/s', flush=True)
        ref = None
        for bi in (256, 512, 1024):
            for br in (1, 2, 4, 8, 16):
                if not 512 <= br * bi <= 8192: continue
                for nw in (4, 8):
                    f = lambda: X._act_bwd_kernel[(triton.cdiv(N, br),)](dh, gu, dgu, rw, drw, N, I, 1.0, 0.0, OAI=False, INTER=False,
                                                                          ROWW=True, DW=True, BR=br, BI=bi, num_warps=nw)
                    f(); torch.cuda.synchronize()
                    if ref is None: ref = (dgu.float().clone(), drw.clone())
                    ok = torch.equal(dgu.float(), ref[0]) and torch.allclose(drw, ref[1], rtol=1e-5, atol=1e-5)
                    t = do_bench(f, warmup=5, rep=50, return_mode='median')
                    print(f'{name} I={I}: BR={br:2d} BI={bi:4d} warps={nw} {t * 1e3:7.1f} us {gb / t * 1e3:.2f} GB/s {"" if ok else "MISMATCH"}', flush=True)

if __name__ == '__main__': main()
