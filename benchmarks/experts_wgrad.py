"""Expert weight gradients at the end-to-end Qwen3 shape (16384 tokens, k 8, E 128, H 2048, I 768): which kernel?

dW1[e] = x[rows of e]ᵀ · dgu[rows of e] (x gathered through the plan), dW2[e] = h[rows of e]ᵀ · dy[rows of e], fp32
results (the master weights' gradients). Candidates: pithtrain's Triton `_wgrad` (gathered or pre-gathered A), and
torch's `_grouped_mm` with the groups along K (CUTLASS grouped GEMM), bf16 or fp32 out. Prints µs, TFLOP/s, rel. error.

    PYTHONPATH=$PWD python3 benchmarks/experts_wgrad.py        # GPU; writes $OUT/experts_wgrad.json when $OUT is set
"""
import os, sys, json, datetime
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch
from triton.testing import do_bench
from pithtrain import experts as X
from pithtrain.dispatch import make_plan

T, k, E, H, I = 16384, 8, 128, 2048, 768
dev, bf = 'cuda', torch.bfloat16
torch.manual_seed(0)
ids = torch.stack([torch.randperm(E, device=dev)[:k] for _ in range(T)])   # balanced-ish
plan = make_plan(ids, E)
N = plan.token_idx.numel()
x = torch.randn(T, H, device=dev, dtype=bf)
dgu = torch.randn(N, 2 * I, device=dev, dtype=bf) * 0.1
h = torch.randn(N, I, device=dev, dtype=bf)
dy = torch.randn(N, H, device=dev, dtype=bf) * 0.1
offs = plan.offsets.to(torch.int32)
res = dict(date=datetime.date.today().isoformat(), device=torch.cuda.get_device_name(), torch=torch.__version__,
           command='python3 benchmarks/experts_wgrad.py', shape=dict(T=T, k=k, E=E, H=H, I=I), rows=[])

def us(fn): fn(); torch.cuda.synchronize(); return do_bench(fn, warmup=10, rep=100, return_mode='median') * 1e3

def run(name, fn, ref, flop):
    try:
        out = fn(); t = us(fn)
        err = ((out.float() - ref).norm() / ref.norm()).item()
        row = dict(name=name, us=t, tflops=flop / t / 1e6, rel_err=err)
    except Exception as e: row = dict(name=name, error=repr(e)[:300])
    res['rows'].append(row); print(row, flush=True)

xg = x[plan.token_idx]
ref1 = torch.cat([xg[a:b].float().t() @ dgu[a:b].float() for a, b in zip(offs[:-1].tolist(), offs[1:].tolist())]).view(E, H, 2 * I)
ref2 = torch.cat([h[a:b].float().t() @ dy[a:b].float() for a, b in zip(offs[:-1].tolist(), offs[1:].tolist())]).view(E, I, H)
f1, f2 = 2 * N * H * 2 * I, 2 * N * I * H
dw1 = torch.empty(E, H, 2 * I, device=dev, dtype=torch.float32)
dw2 = torch.empty(E, I, H, device=dev, dtype=torch.float32)
run('dW1 triton gather fp32', lambda: X._wgrad(x, plan.token_idx, dgu, offs, dw1, None), ref1, f1)
run('dW1 triton pre-gathered fp32 (gather incl.)', lambda: X._wgrad(x[plan.token_idx], None, dgu, offs, dw1, None), ref1, f1)
run('dW2 triton fp32', lambda: X._wgrad(h, None, dy, offs, dw2, None), ref2, f2)
# torch's grouped GEMM along K needs every group a multiple of 16 bytes (8 bf16 rows) and bf16 out: a plan padded
# to 8 rows per expert (timing only; the padding rows make its result differ)
pplan = make_plan(ids, E, pad_to=8); poffs = pplan.offsets.to(torch.int32); NP = pplan.token_idx.numel()
pdgu, ph, pdy = (torch.randn(NP, n, device=dev, dtype=bf) for n in (2 * I, I, H))
gm = lambda a, b: torch._grouped_mm(a, b, offs=poffs[1:])
for name, fn, flop in (('dW1 grouped_mm bf16, padded plan (gather incl.)', lambda: gm(x[pplan.token_idx].t(), pdgu), f1),
                       ('dW2 grouped_mm bf16, padded plan', lambda: gm(ph.t(), pdy), f2)):
    try: fn(); t = us(fn); row = dict(name=name, us=t, tflops=flop / t / 1e6)
    except Exception as e: row = dict(name=name, error=repr(e)[:300])
    res['rows'].append(row); print(row, flush=True)
run('gather x[token_idx] alone', lambda: x[plan.token_idx], xg.float(), 0)

out = os.environ.get('OUT')
if out: json.dump(res, open(os.path.join(out, 'experts_wgrad.json'), 'w'), indent=1)
