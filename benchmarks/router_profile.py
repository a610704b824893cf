"Profile one router forward+backward at Qwen3-30B-A3B shapes (8192 tokens, H 2048, E 128, k 8): CUDA time per kernel."
import os, torch
from torch.profiler import profile, ProfilerActivity
from pithtrain.router import Router, RouterConfig

r = Router(2048, RouterConfig(n_experts=128, top_k=8, norm_topk_prob=True, aux_loss_coef=1e-3)).cuda()
x = torch.randn(8192, 2048, device='cuda', dtype=torch.bfloat16, requires_grad=True)
def step():
    o = r(x); (o.aux_loss + (o.weights * torch.rand_like(o.weights)).sum()).backward()
for _ in range(5): step()
torch.cuda.synchronize()
with profile(activities=[ProfilerActivity.CUDA]) as p:
    for _ in range(10): step()
    torch.cuda.synchronize()
t = p.key_averages().table(sort_by='cuda_time_total', row_limit=18)
print(t); open(os.path.join(os.environ.get('OUT', '/tmp'), 'router_profile.txt'), 'w').write(t)
