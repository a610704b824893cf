"""Host cost of launching the plain products: the Gluon kernel (`experts._pmm_ws`) against the Triton `_pmm`.

A training step that is not a CUDA graph pays each launch's Python and driver time; a step slower on the host than
on the GPU shows it. Times (µs per call, host only: launches queued, one sync at the end) for a tiny product (GPU time
negligible): descriptors + table + launch for each path, and the pieces of the Gluon path; plus the table kernel's GPU
time at the `small` shape.

    PYTHONPATH=$PWD python3 benchmarks/ws_host.py   # GPU
"""
import os, sys, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch, triton
from pithtrain import experts as X

def host_us(fn, n=300):
    for _ in range(10): fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n): fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / n * 1e6

bf = torch.bfloat16
offs = torch.tensor([0, 100, 256], dtype=torch.int32, device='cuda')
a, w, c = torch.randn(256, 128, device='cuda', dtype=bf), torch.randn(2, 128, 256, device='cuda', dtype=bf), torch.empty(256, 256, device='cuda', dtype=bf)
table = X._tile_table(offs, 256)
print('gluon launch, table given  ', round(host_us(lambda: X._pmm_ws(a, offs, w, c, 128, 256, False, table)), 1), flush=True)
print('gluon launch + table       ', round(host_us(lambda: X._pmm_ws(a, offs, w, c, 128, 256, False)), 1), flush=True)
print('table alone                ', round(host_us(lambda: X._tile_table(offs, 256)), 1), flush=True)
X._WS = '0'
print('triton _pmm via _launch    ', round(host_us(lambda: X._launch(X._mm, a, None, offs, w, None, c, None, 128, 256, 256, 1, w.stride(1), 0)), 1), flush=True)
X._WS = 'always'
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GD
lay = gl.NVMMASharedLayout.get_default_for([128, 64], gl.bfloat16)
print('3 layouts + 3 descriptors  ', round(host_us(lambda: [GD.from_tensor(a, [128, 64], gl.NVMMASharedLayout.get_default_for([128, 64], gl.bfloat16)) for _ in range(3)]), 1), flush=True)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from experts_sweep import routing
from triton.testing import do_bench
plan, o2 = routing(16384, 8, 64)
print('table kernel GPU us, small ', round(do_bench(lambda: X._tile_table(o2, plan.token_idx.numel()), warmup=5, rep=30) * 1e3, 1), flush=True)
