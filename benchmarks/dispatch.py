"""Routing plan + gather + weighted combine, forward and backward: pithtrain.dispatch (Triton) vs the torch path.

The torch path is what MoE code usually does: argsort of the expert ids (plus histc/cumsum offsets, no sync),
an index gather `x[order // k]`, and `index_add_` of the weighted rows; autograd gives its backward. Both paths
take x (T, H) bf16, ids (T, k), fp32 weights (T, k) and return (T, H), with grads to x and the weights.
Qwen3-30B-A3B shapes by default: 8192 tokens, H 2048, E 128, top-8. Times are do_bench medians (L2 flushed
between runs); the two paths run in the same process on the same inputs, and their outputs are compared.

    python3 benchmarks/dispatch.py               # GPU: writes benchmarks/results/dispatch-DATE.json and $OUT/dispatch.json
    python3 benchmarks/dispatch.py --cpu-smoke   # CPU, tiny sizes, Triton interpreter: checks the logic only
"""
import argparse, datetime, json, os, statistics, sys, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
ap = argparse.ArgumentParser()
ap.add_argument('--cpu-smoke', action='store_true', help='tiny sizes on CPU through the Triton interpreter')
ap.add_argument('--tokens', type=int, default=8192); ap.add_argument('--hidden', type=int, default=2048)
ap.add_argument('--experts', type=int, default=128); ap.add_argument('--topk', type=int, default=8)
args = ap.parse_args()
if args.cpu_smoke:
    os.environ['TRITON_INTERPRET'] = '1'
    args.tokens, args.hidden, args.experts, args.topk = 64, 48, 8, 3
import torch, triton
from pithtrain.dispatch import make_plan, gather, combine

dev = 'cpu' if args.cpu_smoke else 'cuda'
dt = torch.float32 if args.cpu_smoke else torch.bfloat16
T, H, E, k = args.tokens, args.hidden, args.experts, args.topk
res = dict(date=datetime.date.today().isoformat(), command='python3 ' + ' '.join(sys.argv),
           device='cpu (Triton interpreter)' if args.cpu_smoke else torch.cuda.get_device_name(),
           torch=torch.__version__, triton=triton.__version__, tokens=T, hidden=H, experts=E, topk=k, dtype=str(dt), ms={})
paths = [] if args.cpu_smoke else [os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results', f"dispatch-{res['date']}.json")]
if os.environ.get('OUT'): paths.append(os.path.join(os.environ['OUT'], 'dispatch.json'))

def save():
    for p in paths:
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, 'w') as f: json.dump(res, f, indent=1)

def bench(fn):
    if args.cpu_smoke:
        fn(); ts = []
        for _ in range(3): t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
        return statistics.median(ts) * 1e3
    from triton.testing import do_bench
    return do_bench(fn, warmup=25, rep=200, return_mode='median')

torch.manual_seed(0)
logits = torch.randn(T, E, device=dev)
w0, ids = logits.softmax(-1).topk(k, -1)
x = torch.randn(T, H, device=dev, dtype=dt, requires_grad=True)
w = w0.clone().requires_grad_()
gout = torch.randn(T, H, device=dev, dtype=dt)
tri = None if not args.cpu_smoke else True

# ---- the two paths ----
def ours_plan(): return make_plan(ids, E, use_triton=tri)
def ours_fwd(): p = make_plan(ids, E, use_triton=tri); return combine(gather(x, p, use_triton=tri), w, p, use_triton=tri)
def ours_step(): return torch.autograd.grad(ours_fwd(), (x, w), gout)

def torch_plan():
    flat = ids.reshape(-1)
    order = flat.argsort(stable=True)
    offsets = torch.cumsum(torch.histc(flat.float(), E, 0, E - 1), 0).int()
    return order, order // k, offsets
def torch_fwd():
    order, tok, _ = torch_plan()
    rows = x[tok]
    return torch.zeros_like(x).index_add_(0, tok, rows * w.reshape(-1)[order, None].to(dt))
def torch_step(): return torch.autograd.grad(torch_fwd(), (x, w), gout)

# ---- correctness, same inputs ----
def rel(a, b): return ((a.double() - b.double()).norm() / b.double().norm()).item()
(o1, o2), (g1, g2) = (ours_fwd(), torch_fwd()), (ours_step(), torch_step())
res['rel_err_vs_torch'] = dict(out=rel(o1, o2), dx=rel(g1[0], g2[0]), dw=rel(g1[1], g2[1]))
res['deterministic'] = all(torch.equal(a, b) for a, b in zip(ours_step(), ours_step()))
print('rel err vs torch:', res['rel_err_vs_torch'], 'deterministic:', res['deterministic']); save()

# ---- timings ----
for name, fn in [('pithtrain_plan', ours_plan), ('torch_plan', torch_plan), ('pithtrain_fwd', ours_fwd), ('torch_fwd', torch_fwd),
                 ('pithtrain_fwd_bwd', ours_step), ('torch_fwd_bwd', torch_step)]:
    res['ms'][name] = bench(fn); print(f"{name:20s} {res['ms'][name] * 1e3:9.1f} us"); save()
ms = res['ms']
res['ratio'] = {p: ms[f'pithtrain_{p}'] / ms[f'torch_{p}'] for p in ('plan', 'fwd', 'fwd_bwd')}
res['goal'] = 'pithtrain_fwd_bwd <= 0.40 x torch_fwd_bwd'
res['goal_met'] = res['ratio']['fwd_bwd'] <= 0.40
print('ratio pithtrain / torch:', {k_: round(v, 3) for k_, v in res['ratio'].items()}, 'goal met:', res['goal_met']); save()
assert res['rel_err_vs_torch']['out'] < (1e-5 if args.cpu_smoke else 2e-2), res['rel_err_vs_torch']
