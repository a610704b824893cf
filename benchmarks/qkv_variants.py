"""The step's kernel table (`e2e_kernels.py`) with the attention's q/k/v projections computed another way, for comparing
`Attention.qkv` (q, k, v from one matmul over the stacked weights) with its alternatives on one machine:

    sep     three matmuls (the form before 2026-11-29)
    kv      q alone, k and v stacked
    stack3  `Attention.qkv` as it is

    python3 benchmarks/qkv_variants.py sep --preset small --compile --graph   # GPU: $OUT/e2e_kernels-<preset>-compile-graph.txt
"""
import os, sys, torch, torch.nn.functional as F
sys.path.insert(0, os.getcwd())
from pithtrain.layers import Attention
def kv(self, x):
    ps = (self.k_proj, self.v_proj)
    b = None if self.k_proj.bias is None else torch.cat([p.bias for p in ps])
    k, v = F.linear(x, torch.cat([p.weight for p in ps]), b).split([p.out_features for p in ps], -1)
    return self.q_proj(x), k, v
def sep(self, x): return self.q_proj(x), self.k_proj(x), self.v_proj(x)
v = sys.argv.pop(1)
if v != 'stack3': Attention.qkv = {'kv': kv, 'sep': sep}[v]
sys.argv[0] = 'benchmarks/e2e_kernels.py'
exec(compile(open('benchmarks/e2e_kernels.py').read(), 'benchmarks/e2e_kernels.py', 'exec'))
