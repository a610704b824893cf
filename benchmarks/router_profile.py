"""Profile one router forward+backward at Qwen3-30B-A3B shapes (8192 tokens, H 2048, E 128, k 8): CUDA time per kernel.

    python3 benchmarks/router_profile.py [split_bf16|fp32]    # the gate GEMMs (RouterConfig.gate_gemm), split_bf16 by default
"""
import os, sys, torch
from torch.profiler import profile, ProfilerActivity
from pithtrain.router import Router, RouterConfig

gate = sys.argv[1] if len(sys.argv) > 1 else 'split_bf16'
r = Router(2048, RouterConfig(n_experts=128, top_k=8, norm_topk_prob=True, aux_loss_coef=1e-3, gate_gemm=gate)).cuda()
x = torch.randn(8192, 2048, device='cuda', dtype=torch.bfloat16, requires_grad=True)
def step():
    o = r(x); (o.aux_loss + (o.weights * torch.rand_like(o.weights)).sum()).backward()
for _ in range(5): step()
torch.cuda.synchronize()
with profile(activities=[ProfilerActivity.CUDA]) as p:
    for _ in range(10): step()
    torch.cuda.synchronize()
t = p.key_averages().table(sort_by='cuda_time_total', row_limit=18)
print(t); open(os.path.join(os.environ.get('OUT', '/tmp'), f'router_profile_{gate}.txt'), 'w').write(t)
