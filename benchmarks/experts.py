"""Expert SwiGLU FFN forward+backward on one GPU: pithtrain's Triton path vs torch grouped_mm vs a per-expert loop.

8192 tokens at four real MoE shapes, balanced and skewed routing (the generator of shared/reference/gpu_anchors.py).
Each path goes from tokens in to tokens out: routing plan / permutation, the two expert GEMMs with SwiGLU, and the
weighted combine, forward and backward (weight grads set to None each step, as `zero_grad(set_to_none=True)` does).
FLOPs = 18·H·I·T·k. Peak memory = the step's peak allocation above what the inputs already hold.

    python3 benchmarks/experts.py            # writes benchmarks/results/experts-DATE.json (and $OUT/)
"""
import json, os, sys, time, math, datetime, collections
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch, torch.nn.functional as F
import triton
from triton.testing import do_bench
from pithtrain.experts import expert_ffn, _token_sum

SHAPES = {"qwen3-30b-a3b": (2048, 768, 128, 8), "deepseek-v2-lite": (2048, 1408, 64, 6),
          "olmoe-1b-7b": (2048, 1024, 64, 8), "gpt-oss-20b": (2880, 2880, 32, 4)}
TOKENS, dev = 8192, 'cuda'

# ---- routing plan and combine: pithtrain.dispatch when it is there, else the same contract in a few lines ----
Plan = collections.namedtuple('Plan', 'order token_idx offsets counts inv')
def _make_plan(ids, E):
    flat = ids.reshape(-1)
    counts = torch.histc(flat.float(), E, 0, E - 1).to(torch.int32)
    order = flat.argsort(stable=True)
    offsets = torch.zeros(E + 1, dtype=torch.int32, device=ids.device); offsets[1:] = counts.cumsum(0)
    inv = torch.empty_like(order); inv[order] = torch.arange(order.numel(), device=ids.device)
    return Plan(order, order // ids.shape[1], offsets, counts, inv)

class _Combine(torch.autograd.Function):
    "out[t] = Σ_j w[t,j]·rows[inv[t·k+j]] (deterministic gather-sum); grads to rows and weights."
    @staticmethod
    def forward(ctx, rows, w, inv, token_idx, order):
        ctx.save_for_backward(rows, w, inv, token_idx, order)
        return _token_sum(rows, inv, w.shape[0], rows.dtype, w)
    @staticmethod
    def backward(ctx, dout):
        rows, w, inv, token_idx, order = ctx.saved_tensors
        T, k = w.shape
        drows = dout[token_idx] * w.reshape(-1)[order, None].to(dout.dtype)
        dw = torch.bmm(rows[inv].view(T, k, -1), dout.unsqueeze(-1)).view(T, k).to(w.dtype) if ctx.needs_input_grad[1] else None
        return drows, dw, None, None, None

try:
    from pithtrain.dispatch import make_plan, combine
    DISPATCH = 'pithtrain.dispatch'
except Exception as ex:
    make_plan, combine, DISPATCH = _make_plan, lambda rows, w, p: _Combine.apply(rows, w, p.inv, p.token_idx, p.order), f'local ({ex!r:.80})'

# ---- the anchors, as in shared/reference/gpu_anchors.py ----
def route(T, E, k, skew):
    logits = torch.randn(T, E, device=dev)
    if skew: logits += torch.linspace(2.0, 0, E, device=dev)
    w, idx = logits.softmax(-1).topk(k, -1)
    return w, idx

def loop_ffn(x, w, idx, w1, w2, w3):
    out = torch.zeros_like(x)
    for e in range(w1.shape[0]):
        tok, slot = (idx == e).nonzero(as_tuple=True)
        if tok.numel() == 0: continue
        h = x[tok]
        h = F.silu(h @ w1[e]) * (h @ w3[e])
        out.index_add_(0, tok, (h @ w2[e]) * w[tok, slot, None].to(x.dtype))
    return out

def gmm_ffn(x, w, idx, w1, w2, w3):
    "Expert SwiGLU FFN with torch._grouped_mm, as in shared/reference/gpu_anchors.py (also timed by benchmarks/router.py)."
    E, k = w1.shape[0], idx.shape[1]
    flat = idx.reshape(-1)
    order = flat.argsort(stable=True)
    offs = torch.bincount(flat, minlength=E).cumsum(0).to(torch.int32)
    xs = x[order // k]
    h = F.silu(torch._grouped_mm(xs, w1, offs=offs)) * torch._grouped_mm(xs, w3, offs=offs)
    o = torch._grouped_mm(h, w2, offs=offs) * w.reshape(-1)[order, None].to(x.dtype)
    return torch.zeros_like(x).index_add_(0, order // k, o)

PLAN_KW = {}
def pick_plan_builder():
    "dispatch has a Triton and a torch plan builder (both no-sync); use the faster at the first shape."
    if DISPATCH != 'pithtrain.dispatch': return {}
    H, I, E, k = SHAPES['qwen3-30b-a3b']
    idx = route(TOKENS, E, k, False)[1]
    t = {u: do_bench(lambda: make_plan(idx, E, use_triton=u), warmup=10, rep=50, return_mode='median') for u in (True, False)}
    PLAN_KW['use_triton'] = min(t, key=t.get)
    return {f"make_plan(use_triton={u})_us": v * 1e3 for u, v in t.items()}

def pith_ffn(x, w, idx, w1, w2, E):
    plan = make_plan(idx, E, **PLAN_KW)
    if DISPATCH == 'pithtrain.dispatch':   # as the MoE layer does: routing weights folded into the experts, combine sums
        return combine(expert_ffn(x, plan, w1, w2, weights=w), None, plan)
    return combine(expert_ffn(x, plan, w1, w2), w, plan)

def tflops(flops, ms): return flops / (ms * 1e-3) / 1e12

def main():
    out_dir = os.environ.get('OUT')
    date = datetime.date.today().isoformat()
    res = {"date": date, "device": torch.cuda.get_device_name(), "command": "python3 benchmarks/experts.py", "rows": []}
    detail = {"torch": torch.__version__, "triton": triton.__version__, "dispatch": DISPATCH, "rows": []}
    def save():
        for d in [os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')] + ([out_dir] if out_dir else []):
            os.makedirs(d, exist_ok=True)
            json.dump(res, open(os.path.join(d, f'experts-{date}.json'), 'w'), indent=1)
            json.dump(detail, open(os.path.join(d, f'experts_detail-{date}.json'), 'w'), indent=1)
    detail["plan_builders"] = pick_plan_builder()
    print(f"dispatch: {DISPATCH} {detail['plan_builders']} -> {PLAN_KW}", flush=True)
    for name, (H, I, E, k) in SHAPES.items():
        for routing in ('balanced', 'skewed'):
            t0 = time.time()
            torch.manual_seed(0)
            x = torch.randn(TOKENS, H, device=dev, dtype=torch.bfloat16, requires_grad=True)
            w1 = (torch.randn(E, H, 2 * I, device=dev, dtype=torch.bfloat16) / math.sqrt(H)).requires_grad_()
            w2 = (torch.randn(E, I, H, device=dev, dtype=torch.bfloat16) / math.sqrt(I)).requires_grad_()
            wg, wu = (w1.detach()[..., :I].contiguous().requires_grad_(), w1.detach()[..., I:].contiguous().requires_grad_())
            w, idx = route(TOKENS, E, k, routing == 'skewed')
            g = torch.randn(TOKENS, H, device=dev, dtype=torch.bfloat16)
            flops = 18 * H * I * TOKENS * k
            params = [x, w1, w2, wg, wu]
            def step(fn):
                def f():
                    for p in params: p.grad = None
                    fn().backward(g)
                return f
            paths = {"pithtrain": lambda: pith_ffn(x, w, idx, w1, w2, E),
                     "torch_grouped_mm": lambda: gmm_ffn(x, w, idx, wg, w2, wu),
                     "loop": lambda: loop_ffn(x, w, idx, wg, w2, wu)}
            d = {"shape": name, "routing": routing, "H": H, "I": I, "E": E, "k": k,
                 "max_over_mean_load": (torch.bincount(idx.reshape(-1), minlength=E).max() / (TOKENS * k / E)).item()}
            ref = paths["loop"]().float()
            for label, fn in paths.items():
                try:
                    o = fn()
                    d[f"{label}_relerr"] = ((o.float() - ref).norm() / ref.norm()).item()
                    step(fn)()  # warm (autotune, compile)
                    for p in params: p.grad = None
                    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                    step(fn)(); torch.cuda.synchronize()
                    d[f"{label}_peak_mem_gb"] = (torch.cuda.max_memory_allocated() - base) / 1e9
                    rep = 100 if label == 'loop' else 300
                    ms = do_bench(step(fn), warmup=25, rep=rep, return_mode='median')
                    d[f"{label}_ms"], d[f"{label}_tflops"] = ms, tflops(flops, ms)
                except Exception as ex:
                    d[f"{label}_error"] = repr(ex)[:300]
                    print(name, routing, label, repr(ex)[:300], flush=True)
            detail["rows"].append(d)
            get = lambda key: d.get(key, float('nan'))
            res["rows"].append({"shape": name, "routing": routing, "pithtrain_tflops": get("pithtrain_tflops"),
                                "torch_grouped_mm_tflops": get("torch_grouped_mm_tflops"), "loop_tflops": get("loop_tflops"),
                                "ratio_vs_grouped_mm": get("pithtrain_tflops") / get("torch_grouped_mm_tflops"),
                                "pithtrain_peak_mem_gb": get("pithtrain_peak_mem_gb"), "torch_peak_mem_gb": get("torch_grouped_mm_peak_mem_gb")})
            save()
            r = res["rows"][-1]
            print(f"{name:17s} {routing:9s} pithtrain {r['pithtrain_tflops']:6.1f}  grouped_mm {r['torch_grouped_mm_tflops']:6.1f}  "
                  f"loop {r['loop_tflops']:5.1f}  ratio {r['ratio_vs_grouped_mm']:.2f}x  mem {r['pithtrain_peak_mem_gb']:.2f}/{r['torch_peak_mem_gb']:.2f} GB  "
                  f"err {d.get('pithtrain_relerr', float('nan')):.1e}  ({time.time() - t0:.0f}s)", flush=True)
            del x, w1, w2, wg, wu, params, ref
            torch.cuda.empty_cache()
    print(f"\n{'shape':17s} {'routing':9s} {'pith':>7s} {'gmm':>7s} {'loop':>6s} {'ratio':>6s} {'mem pith/torch GB':>18s}")
    for r in res["rows"]:
        print(f"{r['shape']:17s} {r['routing']:9s} {r['pithtrain_tflops']:7.1f} {r['torch_grouped_mm_tflops']:7.1f} {r['loop_tflops']:6.1f} "
              f"{r['ratio_vs_grouped_mm']:5.2f}x {r['pithtrain_peak_mem_gb']:8.2f}/{r['torch_peak_mem_gb']:.2f}")

def breakdown(name='qwen3-30b-a3b'):
    "Time each kernel of the pithtrain path alone (balanced routing), against its FLOPs."
    from pithtrain import experts as X
    H, I, E, k = SHAPES[name]
    torch.manual_seed(0)
    x = torch.randn(TOKENS, H, device=dev, dtype=torch.bfloat16)
    w1 = torch.randn(E, H, 2 * I, device=dev, dtype=torch.bfloat16) / math.sqrt(H)
    w2 = torch.randn(E, I, H, device=dev, dtype=torch.bfloat16) / math.sqrt(I)
    w, idx = route(TOKENS, E, k, False)
    p = make_plan(idx, E, **PLAN_KW)
    N = TOKENS * k
    h, gu = torch.empty(N, I, device=dev, dtype=torch.bfloat16), torch.empty(N, 2 * I, device=dev, dtype=torch.bfloat16)
    y, dy, dgu = torch.empty(N, H, device=dev, dtype=torch.bfloat16), torch.randn(N, H, device=dev, dtype=torch.bfloat16), torch.empty_like(gu)
    dw1, dw2, dxr = torch.empty_like(w1), torch.empty_like(w2), torch.empty_like(y)
    offs = p.offsets
    X._launch(X._fc1, x, p.token_idx, offs, w1, None, h, gu, H, I, I, w1.stride(2), w1.stride(1), 1)
    parts = {
        "plan": (lambda: make_plan(idx, E, **PLAN_KW), 0),
        "fc1+swiglu (gather)": (lambda: X._launch(X._fc1, x, p.token_idx, offs, w1, None, h, gu, H, I, I, w1.stride(2), w1.stride(1), 1), 4 * N * H * I),
        "fc2": (lambda: X._launch(X._mm, h, None, offs, w2, None, y, None, I, H, I, w2.stride(2), w2.stride(1), 0), 2 * N * H * I),
        "combine fwd": (lambda: X._token_sum(y, p.inv, TOKENS, torch.bfloat16, w), 0),
        "dh+swiglu bwd": (lambda: X._launch(X._dh, dy, None, offs, w2, None, dgu, gu, H, I, I, w2.stride(1), w2.stride(2), 2), 2 * N * H * I),
        "dW2": (lambda: X._wgrad(h, None, dy, offs, dw2, None), 2 * N * H * I),
        "dW1 (gather)": (lambda: X._wgrad(x, p.token_idx, dgu, offs, dw1, None), 4 * N * H * I),
        "dx rows": (lambda: X._launch(X._mm, dgu, None, offs, w1, None, dxr, None, 2 * I, H, I, w1.stride(1), w1.stride(2), 0), 4 * N * H * I),
        "dx token sum": (lambda: X._token_sum(dxr, p.inv, TOKENS, torch.bfloat16), 0),
    }
    out = {}
    for label, (fn, fl) in parts.items():
        fn(); ms = do_bench(fn, warmup=10, rep=100, return_mode='median')
        out[label] = {"us": ms * 1e3, "tflops": tflops(fl, ms) if fl else None}
        print(f"  {label:22s} {ms * 1e3:8.1f} us" + (f"  {tflops(fl, ms):6.1f} TFLOP/s" if fl else ""), flush=True)
    out["sum_us"] = sum(v["us"] for v in out.values())
    print(f"  {'sum':22s} {out['sum_us']:8.1f} us", flush=True)
    for c in ('_fc1', '_mm', '_dh', '_wg'):
        out[f"best_config{c}"] = {str(k): str(v) for k, v in getattr(X, c).cache.items()}
    return out

if __name__ == '__main__':
    main()
    if os.environ.get('BREAKDOWN', '1') == '1':
        print('breakdown, qwen3-30b-a3b balanced:', flush=True)
        b = breakdown()
        d = os.environ.get('OUT') or os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')
        json.dump(b, open(os.path.join(d, f'experts_breakdown-{datetime.date.today().isoformat()}.json'), 'w'), indent=1)
