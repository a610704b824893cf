"""Router forward+backward on one GPU, against the torch grouped_mm expert FFN of the same MoE layer.

Qwen3-30B-A3B shapes: 8192 tokens, H 2048, E 128, k 8 (expert FFN width I 768), bf16 tokens. Each router
variant runs forward (fp32 logits, scores, selection, weights, counts, enabled losses) and backward from
`(weights·g).sum() + aux_loss` to the tokens and the gate; the FFN is the grouped_mm SwiGLU path of
shared/reference/gpu_anchors.py (`gmm_ffn`: argsort, three grouped GEMMs, index_add), forward and backward.
Every variant the fused Triton path can take is timed twice: `path` "fused" (the default on CUDA) and
"torch" (`RouterConfig(fused=False)`); the others (group limit, sequence-level loss) only on "torch". The qwen3
variant is also timed as "fused_fp32" (`gate_gemm='fp32'`: fp32 SGEMMs instead of the split bf16 GEMMs). Two
"gemm" rows time the three gate GEMMs alone (logits, dX, dW): fp32 SGEMMs (with the bf16 -> fp32 cast of x) and
split bf16 tensor-core GEMMs (with the splits of W and dl): the floor of a router on each.
Two times per row, both medians in the same run: `ms`, eager `triton.testing.do_bench` (host launch overhead
included), and `graph_ms`, the same forward+backward captured once in a torch.cuda.CUDAGraph (after warm-up,
static inputs, grads set to None inside the captured step) and replayed, timed with CUDA events over 10
back-to-back replays per sample (device time, L2 warm). `pct_of_ffn` and `graph_pct_of_ffn` compare them with the
FFN's eager and graph times (the FFN's eager time when it cannot be captured: then `ffn_graph_ms` is null and
`ffn_graph_error` says why). The router should stay under 5% of the FFN.

    python3 benchmarks/router.py              # GPU: benchmarks/results/router-DATE.json and $OUT/router.json
    python3 benchmarks/router.py --sweep      # also time the fused kernels' (BLOCK_T, num_warps) choices
    python3 benchmarks/router.py --cpu-smoke  # tiny sizes on CPU, fused path in the Triton interpreter (timings meaningless)
"""
import argparse, datetime, json, math, os, statistics, sys, tempfile, time
if '--cpu-smoke' in sys.argv: os.environ.setdefault('TRITON_INTERPRET', '1')   # before triton decorates the kernels
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch, torch.nn.functional as F
import pithtrain.router as router_mod
from pithtrain.router import Router, RouterConfig, load_stats, fused_ok, split_logits, split_grads, _split_weight
from experts import gmm_ffn   # benchmarks/experts.py: the grouped_mm FFN of gpu_anchors.py

def variants(E, k, seq_len):
    "Router configs to time: name -> (RouterConfig, seq_len passed to forward)."
    base = dict(n_experts=E, top_k=k)
    G = 8 if E % 8 == 0 and E // 8 >= 2 else 1
    return {
        'qwen3 (softmax, renorm, aux)': (RouterConfig(**base, norm_topk_prob=True, aux_loss_coef=1e-3), None),
        'all losses (aux, global, seq, z)': (RouterConfig(**base, norm_topk_prob=True, aux_loss_coef=1e-3, global_aux_loss_coef=1e-3,
                                                          seq_aux_loss_coef=1e-4, z_loss_coef=1e-3), seq_len),
        'deepseek-v3 (sigmoid, groups, bias)': (RouterConfig(**base, score='sigmoid', n_group=G, topk_group=max(G // 2, 1), group_score='top2',
                                                             norm_topk_prob=True, routed_scaling_factor=2.5, aux_free=True,
                                                             seq_aux_loss_coef=1e-4), seq_len),
        'gpt-oss (top-k logits, softmax)': (RouterConfig(**base, score='softmax_topk', bias=True, aux_loss_coef=1e-3), None),
        'capacity 1.25': (RouterConfig(**base, norm_topk_prob=True, aux_loss_coef=1e-3, capacity_factor=1.25), None),
    }

def bench(fn, cuda):
    "Median ms: do_bench on CUDA, a few perf_counter runs on CPU."
    if cuda:
        from triton.testing import do_bench
        return do_bench(fn, warmup=25, rep=200, return_mode='median')
    fn(); ts = []
    for _ in range(3):
        t = time.perf_counter(); fn(); ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)

def graph_time(fn, cuda, samples=30, per=10):
    "Median ms of one call of `fn` captured in a CUDA graph and replayed (None on CPU)."
    if not cuda: return None
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):                    # warm-up outside the capture: autotuning, cuBLAS handles, allocator
        for _ in range(3): fn()
    torch.cuda.current_stream().wait_stream(s); torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g): fn()
    g.replay(); torch.cuda.synchronize()
    ts = []
    for _ in range(samples):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(per): g.replay()
        b.record(); b.synchronize()
        ts.append(a.elapsed_time(b) / per)
    del g; torch.cuda.synchronize()
    return statistics.median(ts)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--cpu-smoke', action='store_true', help='tiny sizes on CPU (checks the logic; no timing claims)')
    ap.add_argument('--out', default=None, help='results folder (default benchmarks/results; a temp folder for --cpu-smoke)')
    ap.add_argument('--sweep', action='store_true', help='time the fused qwen3 router for several (BLOCK_T, num_warps)')
    a = ap.parse_args(argv)
    cuda = not a.cpu_smoke
    if cuda and not torch.cuda.is_available(): sys.exit('no CUDA device: run with --cpu-smoke on CPU')
    dev, dt = ('cuda', torch.bfloat16) if cuda else ('cpu', torch.float32)
    T, H, E, k, I, S = (8192, 2048, 128, 8, 768, 4096) if cuda else (256, 64, 16, 4, 32, 64)
    date = datetime.date.today().isoformat()
    dirs = [a.out or (os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results') if cuda else tempfile.mkdtemp())]
    if os.environ.get('OUT'): dirs.append(os.environ['OUT'])
    res = {'date': date, 'device': torch.cuda.get_device_name() if cuda else 'cpu (smoke)',
           'command': 'python3 benchmarks/router.py' + (' --sweep' if a.sweep else '') + (' --cpu-smoke' if a.cpu_smoke else ''),
           'torch': torch.__version__, 'shape': dict(tokens=T, hidden=H, experts=E, top_k=k, intermediate=I, seq_len=S, dtype=str(dt)), 'rows': []}
    def save():
        for d in dirs:
            os.makedirs(d, exist_ok=True)
            json.dump(res, open(os.path.join(d, 'router.json' if d == os.environ.get('OUT') else f'router-{date}.json'), 'w'), indent=1)

    torch.manual_seed(0)
    x = torch.randn(T, H, device=dev, dtype=dt, requires_grad=True)
    g = torch.randn(T, k, device=dev)
    # the anchor: grouped_mm expert FFN fwd+bwd with the anchors' routing
    w1, w3 = ((torch.randn(E, H, I, device=dev, dtype=dt) / math.sqrt(H)).requires_grad_() for _ in range(2))
    w2 = (torch.randn(E, I, H, device=dev, dtype=dt) / math.sqrt(I)).requires_grad_()
    wr, idx = torch.randn(T, E, device=dev).softmax(-1).topk(k, -1)
    gy = torch.randn(T, H, device=dev, dtype=dt)
    def ffn_step():
        for p in (x, w1, w2, w3): p.grad = None
        gmm_ffn(x, wr, idx, w1, w2, w3).backward(gy)
    res['ffn_ms'] = bench(ffn_step, cuda); save()
    try: res['ffn_graph_ms'] = graph_time(ffn_step, cuda)
    except Exception as e:   # e.g. a host sync inside grouped_mm's path: not capturable
        res['ffn_graph_ms'], res['ffn_graph_error'] = None, f'{type(e).__name__}: {e}'[:300]
        torch.cuda.synchronize()
    save()
    ffn_graph = res['ffn_graph_ms'] or res['ffn_ms']
    print(f"{'router':38s} {'path':10s} {'ms':>8s} {'% of FFN':>9s} {'graph_ms':>9s} {'% of FFN':>9s}   (grouped_mm FFN fwd+bwd: "
          f"{res['ffn_ms']:.3f} ms eager, {res['ffn_graph_ms'] if res['ffn_graph_ms'] is None else round(res['ffn_graph_ms'], 3)} ms graph)")
    def add(row, step=None):
        row['pct_of_ffn'] = 100 * row['ms'] / res['ffn_ms']
        try: row['graph_ms'] = graph_time(step, cuda) if step is not None else None
        except Exception as e:
            row['graph_ms'], row['graph_error'] = None, f'{type(e).__name__}: {e}'[:300]
            if cuda: torch.cuda.synchronize()
        row['graph_pct_of_ffn'] = None if row['graph_ms'] is None else 100 * row['graph_ms'] / ffn_graph
        res['rows'].append(row); save()
        gm = '' if row['graph_ms'] is None else f"{row['graph_ms']:9.3f} {row['graph_pct_of_ffn']:8.2f}%"
        print(f"{row['router']:38s} {row['path']:10s} {row['ms']:8.3f} {row['pct_of_ffn']:8.2f}% {gm}", flush=True)
    # the floor: the three gate GEMMs (logits, dX, dW), nothing else: fp32 SGEMMs with the bf16 -> fp32 cast of x,
    # and the split bf16 GEMMs with the splits of W and of the logits' gradient
    wg = (torch.randn(E, H, device=dev) * 0.02).requires_grad_()
    gl = torch.randn(T, E, device=dev)
    def gemm_step():
        x.grad = wg.grad = None
        F.linear(x.float(), wg).backward(gl)
    add(dict(router='gate GEMMs only (floor)', path='gemm', ms=bench(gemm_step, cuda)), gemm_step)
    if x.dtype == torch.bfloat16 or not cuda:
        xs = x.detach().bfloat16()
        def split_step():
            wb = _split_weight(wg.detach())
            split_logits(xs, wb)
            return split_grads(gl, wb, xs)
        add(dict(router='gate GEMMs split bf16 (floor)', path='gemm', ms=bench(split_step, cuda)), split_step)
    def time_router(cfg, seq_len, graph=False):
        r = Router(H, cfg, triton_on_cpu=not cuda).to(dev)
        def step():
            x.grad = None
            for p in r.parameters(): p.grad = None
            o = r(x, seq_len=seq_len)
            ((o.weights * g).sum() + o.aux_loss).backward()
        ms = bench(step, cuda)
        with torch.no_grad(): o = r(x, seq_len=seq_len)
        st = load_stats(o.counts, o.probs, r.capacity(T))
        r.update_bias(); r.reset_global_counts()
        return (ms, st, step) if graph else (ms, st)
    for name, (cfg, seq_len) in variants(E, k, S).items():
        paths = ('fused', 'torch') if fused_ok(cfg) else ('torch',)
        if name.startswith('qwen3') and fused_ok(cfg): paths = ('fused', 'fused_fp32', 'torch')
        for path in paths:
            c = {'fused': cfg, 'fused_fp32': cfg.replace(gate_gemm='fp32'), 'torch': cfg.replace(fused=False)}[path]
            ms, st, step = time_router(c, seq_len, graph=True)
            add(dict(router=name, path=path, ms=ms, config=c.to_dict(), max_over_mean=st['max_over_mean'], dropped=st['dropped']), step)
    if a.sweep:   # the fused kernels' tile: rows per program and warps (the default is router._tile's choice)
        cfg, seq_len = variants(E, k, S)['qwen3 (softmax, renorm, aux)']
        res['sweep'] = []
        for bt, warps in ((4, 1), (8, 2), (8, 4), (16, 4), (16, 8), (32, 4), (32, 8), (64, 8)):
            router_mod._TILE = (bt, warps)
            try: ms = time_router(cfg, seq_len)[0]
            finally: router_mod._TILE = None
            res['sweep'].append(dict(block_t=bt, num_warps=warps, ms=ms)); save()
            print(f"  sweep qwen3 fused BLOCK_T={bt:3d} warps={warps}: {ms:.3f} ms", flush=True)
        res['sweep_default'] = router_mod._tile(E); save()
    print('wrote', ', '.join(dirs))
    return res

if __name__ == '__main__': main()
