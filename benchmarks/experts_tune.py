"""Second tuning round of the expert path (one GPU call): tests, plan builders old/new, per-kernel configs side by side.

    export PYTHONPATH=$PWD; python3 benchmarks/experts_tune.py   # writes $OUT/experts_tune.json (or benchmarks/results/)
Old kernels stay reachable: the first version's plan builder is copied below; old tile configs are the first entries.
"""
import json, os, sys, math, datetime, subprocess
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch, triton, triton.language as tl
from triton.testing import do_bench
from pithtrain import experts as X
from pithtrain.dispatch import make_plan, make_plan_torch, make_plan_triton, RoutingPlan

OUT = os.environ.get('OUT') or os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')
res = {"date": datetime.date.today().isoformat(), "device": torch.cuda.get_device_name(),
       "command": "python3 benchmarks/experts_tune.py", "torch": torch.__version__, "triton": triton.__version__}
def save(): json.dump(res, open(os.path.join(OUT, 'experts_tune.json'), 'w'), indent=1)

# ---- the first version's plan builder (BLOCK² ranks, torch scan between launches), for comparison ----
@triton.jit
def _hist_v1(ids_ptr, hist_ptr, M, E, BLOCK: tl.constexpr, EP: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    i = b * BLOCK + tl.arange(0, BLOCK)
    e = tl.load(ids_ptr + i, mask=i < M, other=-1)
    ex = tl.arange(0, EP)
    tl.store(hist_ptr + b * E + ex, tl.sum((e[:, None] == ex[None, :]).to(tl.int32), axis=0), mask=ex < E)

@triton.jit
def _place_v1(ids_ptr, base_ptr, order_ptr, tok_ptr, inv_ptr, M, E, K, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    j = tl.arange(0, BLOCK)
    i = b * BLOCK + j
    m = i < M
    e = tl.load(ids_ptr + i, mask=m, other=-1)
    rank = tl.sum(((e[:, None] == e[None, :]) & (j[None, :] < j[:, None])).to(tl.int32), axis=1).to(tl.int64)
    row = tl.load(base_ptr + b * E + e, mask=m, other=0) + rank
    tl.store(inv_ptr + i, row, mask=m); tl.store(order_ptr + row, i, mask=m); tl.store(tok_ptr + row, i // K, mask=m)

def make_plan_v1(ids, E):
    T, k = ids.shape
    flat, dev = ids.reshape(-1).long().contiguous(), ids.device
    M, B = flat.numel(), 128
    nb = triton.cdiv(M, B)
    hist = torch.zeros(nb, E, dtype=torch.int32, device=dev)
    _hist_v1[(nb,)](flat, hist, M, E, BLOCK=B, EP=triton.next_power_of_2(E))
    counts = hist.sum(0, dtype=torch.int64)
    offsets = torch.zeros(E + 1, dtype=torch.int64, device=dev); offsets[1:] = torch.cumsum(counts, 0)
    base = (offsets[:-1][None, :] + torch.cumsum(hist, 0, dtype=torch.int64) - hist).contiguous()
    order, tok, inv = (torch.empty(M, dtype=torch.int64, device=dev) for _ in range(3))
    _place_v1[(nb,)](flat, base, order, tok, inv, M, E, k, BLOCK=B)
    return RoutingPlan(order, tok, offsets.to(torch.int32), counts.to(torch.int32), inv, None, k)

def sort_plan(ids, E):
    "One torch.sort of unique int32 keys expert·M + pair (the brief's alternative)."
    T, k = ids.shape
    M, dev = ids.numel(), ids.device
    ar = torch.arange(M, device=dev, dtype=torch.int32)
    skey, _ = torch.sort(ids.reshape(-1).to(torch.int32) * M + ar)
    order = (skey % M).long()
    counts = torch.zeros(E, dtype=torch.int32, device=dev).scatter_add_(0, ids.reshape(-1), torch.ones(M, dtype=torch.int32, device=dev))
    offsets = torch.zeros(E + 1, dtype=torch.int32, device=dev); offsets[1:] = counts.cumsum(0)
    inv = torch.empty(M, dtype=torch.int64, device=dev); inv[order] = ar.long()
    return RoutingPlan(order, order // k, offsets, counts, inv, None, k)

def us(fn, rep=100): fn(); return do_bench(fn, warmup=10, rep=rep, return_mode='median') * 1e3

def plans():
    torch.manual_seed(0)
    out = {}
    for T, E, k in [(8192, 128, 8), (8192, 64, 6), (8192, 32, 4), (32768, 128, 8)]:
        ids = torch.randn(T, E, device='cuda').topk(k, -1).indices
        ref = make_plan_torch(ids, E)
        ok = {}
        for name, f in [('v1_triton', lambda: make_plan_v1(ids, E)), ('v2_triton', lambda: make_plan_triton(ids, E)),
                        ('torch_sort_int32_keys', lambda: sort_plan(ids, E)), ('torch_stable_sort', lambda: make_plan_torch(ids, E))]:
            p = f()
            ok[name] = all(torch.equal(a, b) for a, b in zip(p[:5], ref[:5]))
            out[f"T{T}_E{E}_k{k}/{name}"] = {"us": us(f), "equal_to_stable": ok[name]}
            # GPU time alone (CUDA graph: no launch overhead) for the two Triton builders
        g = torch.cuda.CUDAGraph()
        make_plan_triton(ids, E); torch.cuda.synchronize()
        with torch.cuda.graph(g): make_plan_triton(ids, E)
        out[f"T{T}_E{E}_k{k}/v2_triton_graph_replay"] = {"us": us(g.replay)}
        print(T, E, k, {n: round(v['us'], 1) for n, v in out.items() if n.startswith(f"T{T}_E{E}")}, ok, flush=True)
    return out

# ---- per kernel, Qwen3 balanced: each config of dh and wgrad, checked against the first config ----
def kernels():
    H, I, E, k, T = 2048, 768, 128, 8, 8192
    torch.manual_seed(0)
    x = torch.randn(T, H, device='cuda', dtype=torch.bfloat16)
    w1 = torch.randn(E, H, 2 * I, device='cuda', dtype=torch.bfloat16) / math.sqrt(H)
    w2 = torch.randn(E, I, H, device='cuda', dtype=torch.bfloat16) / math.sqrt(I)
    ids = torch.randn(T, E, device='cuda').topk(k, -1).indices
    p = make_plan(ids, E); N = T * k; offs = p.offsets
    h, gu = torch.empty(N, I, device='cuda', dtype=torch.bfloat16), torch.empty(N, 2 * I, device='cuda', dtype=torch.bfloat16)
    dy = torch.randn(N, H, device='cuda', dtype=torch.bfloat16)
    X._launch(X._fc1, x, p.token_idx, offs, w1, None, h, gu, H, I, I, w1.stride(2), w1.stride(1), 1)
    out = {}
    dh_raw = X._even_k(X._gmm_kernel)
    ref = None
    for cfg in [c.kwargs | {'w': c.num_warps, 's': c.num_stages} for c in X._dh.configs]:
        dgu = torch.empty_like(gu)
        def f():
            grid = (triton.cdiv(N, cfg['BM']) + E) * triton.cdiv(I, cfg['BN'])
            dh_raw[(grid,)](dy, dy, offs, w2, w2, dgu, gu, E, H, I, I, dy.stride(0), dy.stride(1), w2.stride(0), w2.stride(2), w2.stride(1),
                            dgu.stride(0), dgu.stride(1), gu.stride(0), gu.stride(1), 1.0, 0.0, ACT=2, OAI=False, INTER=False, GATHER=False,
                            HAS_BIAS=False, EP2=triton.next_power_of_2(E), MB=X._mb(N), BM=cfg['BM'], BN=cfg['BN'], BK=cfg['BK'],
                            num_warps=cfg['w'], num_stages=cfg['s'])
        try:
            t = us(f); ref = dgu.clone() if ref is None else ref
            err = ((dgu.float() - ref.float()).norm() / ref.float().norm()).item()
            k_ = f"dh {cfg}"; out[k_] = {"us": t, "tflops": 2 * N * H * I / t / 1e6, "relerr_vs_first": err}
            print(k_, out[k_], flush=True)
        except Exception as ex: out[f"dh {cfg}"] = {"error": repr(ex)[:200]}
    dgu = torch.randn_like(gu) * 0.1
    wg_raw = X._even_mn(X._wgrad_kernel)
    for label, a, tok, b, KO, NO in [("dW1 (gather)", x, p.token_idx, dgu, H, 2 * I), ("dW2", h, None, dy, I, H)]:
        ref = None
        for cfg in [c.kwargs | {'w': c.num_warps, 's': c.num_stages} for c in X._wg.configs]:
            dw = torch.empty(E, KO, NO, device='cuda', dtype=torch.bfloat16)
            def f():
                grid = (E * triton.cdiv(KO, cfg['BM']) * triton.cdiv(NO, cfg['BN']),)
                wg_raw[grid](a, tok if tok is not None else a, b, offs, dw, dw, KO, NO, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
                             dw.stride(0), dw.stride(1), dw.stride(2), X._mb(N), GATHER=tok is not None, HAS_BIAS=False,
                             BM=cfg['BM'], BN=cfg['BN'], BK=cfg['BK'], TA=cfg['TA'], num_warps=cfg['w'], num_stages=cfg['s'])
            try:
                t = us(f); ref = dw.clone() if ref is None else ref
                err = ((dw.float() - ref.float()).norm() / ref.float().norm()).item()
                k_ = f"{label} {cfg}"; out[k_] = {"us": t, "tflops": 2 * N * KO * NO / t / 1e6, "relerr_vs_first": err}
                print(k_, out[k_], flush=True)
            except Exception as ex: out[f"{label} {cfg}"] = {"error": repr(ex)[:200]}
    return out

if __name__ == '__main__':
    what = sys.argv[1:] or ['plans', 'kernels']
    if 'plans' in what: res["plans"] = plans(); save()
    if 'kernels' in what: res["kernels"] = kernels(); save()
