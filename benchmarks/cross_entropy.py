"""LM head + cross-entropy forward+backward on one GPU: pithtrain's fused CE vs the previous chunked CE vs full logits.

- `fused`: `pithtrain.layers.cross_entropy`: per chunk the logits GEMM, one Triton kernel that writes the loss and
  overwrites the logits with their gradient, then the dH and dW GEMMs, all in the forward; the backward scales.
- `fused, torch rows`: the same with the row kernel replaced by its torch twin (fp32 copy of the chunk).
- `fused, fp32 master head`: the head weight is an fp32 parameter (cast to bf16 inside, fp32 dW out).
- `chunked v1`: the previous version (a copy below): loss in the forward, logits recomputed in the backward.
- `full logits`: `F.cross_entropy(F.linear(h, W).float(), y)`, as transformers computes it.

bf16 autocast, bf16 hidden states and head (as `31_bench` passes them), 10% ignored labels, at Qwen3-30B-A3B's
head (16384 tokens, H 2048, V 151936) and a 32K vocabulary (16384, 1024, 32000). FLOPs = 6·T·H·V (logits, dH,
dW). Times are `triton.testing.do_bench` medians in one run; peak memory is the step's peak allocation above
what the inputs hold; errors are against fp32 logits of the same bf16 inputs. Also timed: the three bf16 GEMMs
alone in the fused version's chunks (the floor), and the row kernel alone over one chunk for a few
(block, warps) settings.

    python3 benchmarks/cross_entropy.py [--out DIR]   # GPU: benchmarks/results/cross_entropy-DATE.json (and DIR/)
    python3 benchmarks/cross_entropy.py --cpu-smoke   # tiny sizes on CPU: checks the script runs (no timing claims)
"""
import argparse, datetime, json, os, statistics, sys, tempfile, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch, torch.nn.functional as F
import triton
from pithtrain.core import rel_err
from pithtrain import layers
from pithtrain.layers import cross_entropy, ce_chunk, _ce_rows

SHAPES = {'qwen3-30b-a3b head': (16384, 2048, 151936), '32k vocab': (16384, 1024, 32000)}

# ---- the previous version (pithtrain.layers before the fused CE), kept here as the anchor ----
class _ChunkedCEv1(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w, labels, chunk, reduction, dt):
        ctx.hdt, ctx.wdt, ctx.chunk = h.dtype, w.dtype, chunk
        hc, wc = h.to(dt), w.to(dt)
        valid = labels != -100
        lse = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        tgt = torch.empty_like(lse)
        with torch.autocast(h.device.type, enabled=False):
            for i in range(0, h.shape[0], chunk):
                lg = (hc[i:i + chunk] @ wc.t()).float()
                lse[i:i + chunk] = lg.logsumexp(-1)
                tgt[i:i + chunk] = lg.gather(1, labels[i:i + chunk].clamp_min(0)[:, None])[:, 0]
        total = ((lse - tgt) * valid).sum()
        denom = valid.sum().clamp_min(1).float() if reduction == 'mean' else torch.ones((), device=h.device)
        ctx.save_for_backward(hc, wc, labels, lse, denom)
        return total / denom

    @staticmethod
    def backward(ctx, g):
        h, w, labels, lse, denom = ctx.saved_tensors
        scale = (g / denom).float()
        dh, dw = torch.empty(h.shape, dtype=ctx.hdt, device=h.device), torch.zeros(w.shape, dtype=torch.float32, device=w.device)
        for i in range(0, h.shape[0], ctx.chunk):
            hc, lc = h[i:i + ctx.chunk], labels[i:i + ctx.chunk]
            p = (hc @ w.t()).float().sub_(lse[i:i + ctx.chunk, None]).exp_()
            p.scatter_add_(1, lc.clamp_min(0)[:, None], -torch.ones_like(p[:, :1]))
            p.mul_(((lc != -100).float() * scale)[:, None])
            p = p.to(h.dtype)
            dh[i:i + ctx.chunk] = p @ w
            dw += p.t() @ hc
        return dh, dw.to(ctx.wdt), None, None, None, None

def chunked_ce_v1(hidden, weight, labels, chunk=4096, reduction='mean'):
    "The previous `cross_entropy` (chunk 4096 was its default)."
    h, l = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
    dev = h.device.type
    dt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else torch.promote_types(h.dtype, weight.dtype)
    return _ChunkedCEv1.apply(h, weight, l, chunk, reduction, dt)

def full_logits_ce(h, w, y):
    "Full (T, V) logits in the autocast dtype, upcast to fp32, F.cross_entropy (transformers' way)."
    return F.cross_entropy(F.linear(h, w).float(), y, ignore_index=-100)

# ---- measuring ----
def bench(fn, cuda, rep=1000):
    "Median ms: do_bench on CUDA, a few perf_counter runs on CPU."
    if cuda:
        from triton.testing import do_bench
        return do_bench(fn, warmup=300, rep=rep, return_mode='median')
    fn(); ts = []
    for _ in range(3):
        t = time.perf_counter(); fn(); ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)

def peak_extra(fn, cuda):
    "Peak allocation of one call above what was allocated before it (bytes); 0 on CPU."
    if not cuda: fn(); return 0
    fn(); torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
    fn(); torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base

def fp32_reference(h, w, y):
    "Loss and gradients from fp32 logits of the same bf16 inputs."
    hf, wf = h.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    with torch.autocast(h.device.type, enabled=False):
        loss = F.cross_entropy(hf @ wf.t(), y, ignore_index=-100); loss.backward()
    return loss.detach(), hf.grad, wf.grad

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--cpu-smoke', action='store_true', help='tiny sizes on CPU (checks the logic; no timing claims)')
    ap.add_argument('--out', default=None, help='also write the JSON into this folder')
    ap.add_argument('--rep-ms', type=float, default=1000, help='do_bench repetition time per measurement (ms)')
    ap.add_argument('--kernel-only', action='store_true', help='only the row kernel sweep (no LM-head variants, no GEMM floor)')
    ap.add_argument('--rounds', type=int, default=3, help='interleaved rounds of the row kernel sweep')
    a = ap.parse_args(argv)
    cuda = not a.cpu_smoke
    if cuda and not torch.cuda.is_available(): sys.exit('no CUDA device: run with --cpu-smoke on CPU')
    dev = 'cuda' if cuda else 'cpu'
    shapes = SHAPES if cuda else {'smoke A': (512, 64, 3000), 'smoke B': (256, 32, 1000)}
    date = datetime.date.today().isoformat()
    name = f"cross_entropy{'-kernel' if a.kernel_only else ''}-{date}.json"
    here = os.path.dirname(os.path.abspath(__file__))
    dirs = [os.path.join(here, 'results') if cuda else tempfile.mkdtemp()] + [d for d in (a.out, os.environ.get('OUT')) if d]
    cmd = 'python3 benchmarks/cross_entropy.py' + (' --cpu-smoke' if a.cpu_smoke else '') + (f' --out {a.out}' if a.out else '') + (' --kernel-only' if a.kernel_only else '')
    res = {'date': date, 'device': torch.cuda.get_device_name() if cuda else 'cpu (smoke)', 'command': cmd,
           'torch': torch.__version__, 'triton': triton.__version__, 'autocast': 'bfloat16', 'flops': '6*T*H*V',
           'ce_chunk_bytes': layers.CE_CHUNK_BYTES, 'rows': [], 'gemm_floor': [], 'kernel_sweep': []}
    def save():
        for d in dirs:
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, name), 'w') as f: json.dump(res, f, indent=1)

    for shape, (T, H, V) in shapes.items():
        torch.manual_seed(0)
        h = torch.randn(T, H, device=dev).bfloat16().requires_grad_()
        w = (torch.randn(V, H, device=dev) * 0.02).bfloat16().requires_grad_()
        w32 = w.detach().float().requires_grad_()   # an fp32 master head
        y = torch.randint(0, V, (T,), device=dev); y[::10] = -100
        flop = 6 * T * H * V
        chunk = ce_chunk(T, V, 2)
        ref = None if a.kernel_only else fp32_reference(h, w, y)
        print(f"\n{shape}: T={T} H={H} V={V}, fused chunk {chunk}; full fp32 logits would be {T * V * 4 / 1e9:.2f} GB", flush=True)
        variants = {} if a.kernel_only else {
            'fused': (lambda: cross_entropy(h, w, y), (h, w)),
            'fused, torch rows': (lambda: cross_entropy(h, w, y, backend='torch'), (h, w)),
            'fused, fp32 master head': (lambda: cross_entropy(h, w32, y), (h, w32)),
            'chunked v1': (lambda: chunked_ce_v1(h, w, y), (h, w)),
            'full logits': (lambda: full_logits_ce(h, w, y), (h, w)),
        }
        v1_ms = None
        if variants: print(f"{'variant':26s} {'ms':>8s} {'TFLOP/s':>8s} {'peak GB':>8s}  rel err loss / dH / dW")
        for vname, (fn, params) in variants.items():
            def step():
                for p in params: p.grad = None
                with torch.autocast(dev, dtype=torch.bfloat16): loss = fn()
                loss.backward()
                return loss
            for p in params: p.grad = None
            with torch.autocast(dev, dtype=torch.bfloat16): loss = fn()
            loss.backward()
            errs = (abs(loss.item() - ref[0].item()) / ref[0].item(), rel_err(params[0].grad, ref[1]), rel_err(params[1].grad, ref[2]))
            mem = peak_extra(step, cuda)
            ms = bench(step, cuda, a.rep_ms)
            v1_ms = ms if vname == 'chunked v1' else v1_ms
            row = dict(shape=shape, tokens=T, hidden=H, vocab=V, variant=vname, ms=ms, tflops=flop / ms / 1e9,
                       peak_extra_gb=mem / 1e9, rel_err_loss=errs[0], rel_err_dh=errs[1], rel_err_dw=errs[2],
                       chunk=chunk if vname.startswith('fused') else 4096 if vname == 'chunked v1' else T)
            res['rows'].append(row); save()
            print(f"{vname:26s} {ms:8.2f} {row['tflops']:8.1f} {mem / 1e9:8.2f}  {errs[0]:.1e} / {errs[1]:.1e} / {errs[2]:.1e}", flush=True)
            for p in params: p.grad = None
        for row in res['rows']:
            if row['shape'] == shape and v1_ms: row['speedup_vs_v1'] = v1_ms / row['ms']
        if variants: print('speed-up vs chunked v1:', {r['variant']: round(r['speedup_vs_v1'], 2) for r in res['rows'] if r['shape'] == shape})
        res['dw_fp32_addmm'] = layers._ADDMM_F32.get('cuda', True) if cuda else None
        save()

        # the floor: the three bf16 GEMMs of the fused version's chunks, nothing else
        if not a.kernel_only:
            hb, wb = h.detach(), w.detach()
            lgs = [torch.randn(min(chunk, T - i), V, device=dev).bfloat16() for i in range(0, T, chunk)]
            def gemms():
                for j, i in enumerate(range(0, T, chunk)):
                    hc = hb[i:i + chunk]
                    torch.mm(hc, wb.t(), out=lgs[j]); _ = lgs[j] @ wb; _ = lgs[j].t() @ hc
            ms = bench(gemms, cuda, a.rep_ms)
            res['gemm_floor'].append(dict(shape=shape, chunk=chunk, ms=ms, tflops=flop / ms / 1e9)); save()
            print(f"three GEMMs alone: {ms:.2f} ms ({flop / ms / 1e9:.1f} TFLOP/s)", flush=True)
            del lgs

        # the row kernel alone over one chunk: bytes = read (+ read + write with the gradient)
        if cuda:
            n = min(chunk, T)
            lg = (torch.randn(n, V, device=dev) * 2).bfloat16()
            yy, out, sc = y[:n].contiguous(), torch.empty(n, device=dev), torch.tensor(1 / n, device=dev)
            # (block, warps); None: `_ce_rows`'s defaults. Interleaved: every setting once a round, the median of the rounds.
            # (A one-pass kernel holding the row in registers, BV 32768 at 8/16/32 warps, was measured at commit 9de7889:
            # results/cross_entropy-kernel-onepass-2026-11-29.json, slower.)
            cfgs = [(1024, 4), (2048, 4), (4096, 8), (4096, 16), (8192, 8), (8192, 16), (None, None)]
            times = {(c, grad): [] for c in cfgs for grad in (True, False)}
            for _ in range(a.rounds):
                for (BV, warps), grad in times:
                    kw = {} if BV is None else dict(block=BV, warps=warps)   # (None, None): what the library calls
                    times[(BV, warps), grad].append(bench(lambda: _ce_rows(lg, yy, sc, grad, out, **kw), cuda, 200))
            for ((BV, warps), grad), ts in times.items():
                ms = statistics.median(ts)
                gbs = (3 if grad else 1) * n * V * 2 / ms / 1e6
                res['kernel_sweep'].append(dict(shape=shape, rows=n, block=BV, warps=warps, grad=grad, ms=ms, ms_rounds=ts, gb_per_s=gbs))
                print(f"row kernel BV={BV!s:5s} warps={warps!s:4s} grad={grad!s:5s}: {ms:6.3f} ms {gbs:7.0f} GB/s", flush=True)
            save()
            del lg
        del h, w, w32, ref
        if cuda: torch.cuda.empty_cache()
    print('wrote', ', '.join(os.path.join(d, name) for d in dirs))
    return res

if __name__ == '__main__': main()
