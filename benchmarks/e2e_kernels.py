"""Where a whole training step's GPU time goes, kernel by kernel: torch.profiler over a few steps of pithtrain's step.

The component profile of `e2e.py --profile` times each part alone (launch overhead included, compile off); this
traces the real step (optionally compiled) and groups CUDA kernel time by name, so the table sums to the step.

    python3 benchmarks/e2e_kernels.py --preset qwen3-30b-a3b-6l --compile   # GPU: $OUT/e2e_kernels-<preset>.txt
    python3 benchmarks/e2e_kernels.py --preset tiny --cpu-smoke             # CPU: checks the logic only
"""
import os, sys, argparse, time
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import torch
from torch.profiler import profile, ProfilerActivity
from pithtrain.bench import BATCH, pithtrain_step
from pithtrain.qwen3_moe import Qwen3MoEConfig

ap = argparse.ArgumentParser()
ap.add_argument('--preset', default='qwen3-30b-a3b-6l', choices=list(BATCH))
ap.add_argument('--compile', action='store_true')
ap.add_argument('--graph', action='store_true', help='forward + backward replayed as one CUDA graph')
ap.add_argument('--overlap', action='store_true', help='with --graph: the AdamW step on a side stream beside the next forward')
ap.add_argument('--steps', type=int, default=3)
ap.add_argument('--rows', type=int, default=45)
ap.add_argument('--cpu-smoke', action='store_true')
ap.add_argument('--cpu-rows', type=int, default=0, help='also list the ops with the most self CPU time (host overhead)')
ap.add_argument('--gaps', type=int, default=0, help='also bucket the idle gaps between kernels and list this many of the largest')
ap.add_argument('--by-op', type=int, default=0, help='also list this many (kernel, launching ops, shapes) rows (no --graph: a replay has no ops)')
a = ap.parse_args()
dev = torch.device('cpu' if a.cpu_smoke else 'cuda')
c = Qwen3MoEConfig.preset(a.preset); B, S = BATCH[a.preset]
model, opt, step = pithtrain_step(c, B, S, dev, compile=a.compile, graph=a.graph, overlap=a.overlap)
for _ in range(3): step()
if dev.type == 'cuda': torch.cuda.synchronize()
acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == 'cuda' else [])
t0 = time.perf_counter()
with profile(activities=acts, record_shapes=bool(a.by_op)) as p:
    for _ in range(a.steps): step()
    if dev.type == 'cuda': torch.cuda.synchronize()
wall = (time.perf_counter() - t0) / a.steps * 1e3
ANNOT = ('Optimizer.', 'ProfilerStep')   # user annotations that also show on the GPU timeline: not kernels
ev = [e for e in p.key_averages() if (e.device_type.name == 'CUDA' if dev.type == 'cuda' else True) and not e.key.startswith(ANNOT)]
def union(iv):
    "Merged [start, end] intervals covering `iv` (sorted)."
    un = []
    for s0, s1 in sorted(iv):
        if un and s0 <= un[-1][1]: un[-1][1] = max(un[-1][1], s1)
        else: un.append([s0, s1])
    return un
kev = [(e.time_range.start, e.time_range.end, e.name) for e in p.events()
      if e.device_type.name == 'CUDA' and not e.name.startswith(ANNOT)] if dev.type == 'cuda' else []
ks = [(s0, s1, 'adamw' in n) for s0, s1, n in kev]
# GPU busy time: the union of the kernels' intervals (what is left of the wall time is idle GPU)
busy = sum(s1 - s0 for s0, s1 in union((s0, s1) for s0, s1, _ in ks)) / a.steps / 1e3
hidden = ''   # with --overlap: how much of the AdamW kernels' time ran beside other kernels
if ks and a.overlap:
    import bisect
    un = union((s0, s1) for s0, s1, ad in ks if not ad)   # the other kernels
    starts = [u[0] for u in un]; tot_ad = ov_ad = 0.0
    for s0, s1, ad in ks:
        if not ad: continue
        tot_ad += s1 - s0; i = max(0, bisect.bisect_right(starts, s0) - 1)
        while i < len(un) and un[i][0] < s1: ov_ad += max(0.0, min(s1, un[i][1]) - max(s0, un[i][0])); i += 1
    hidden = f"; AdamW kernels {tot_ad / a.steps / 1e3:.2f} ms/step, of which {ov_ad / a.steps / 1e3:.2f} beside other kernels"
key = (lambda e: e.self_device_time_total) if dev.type == 'cuda' else (lambda e: e.self_cpu_time_total)
ev.sort(key=key, reverse=True)
total = sum(key(e) for e in ev) / a.steps / 1e3
lines = [f"preset {a.preset} B{B}xS{S} compile={a.compile} graph={a.graph} steps={a.steps}: wall {wall:.1f} ms/step (profiled), "
         f"kernel time {total:.1f} ms/step, GPU busy {busy:.1f} ms/step (union of kernel intervals){hidden}", f"{'ms/step':>8} {'share':>6} {'calls':>6}  kernel"]
for e in ev[:a.rows]:
    ms = key(e) / a.steps / 1e3
    lines.append(f"{ms:8.2f} {ms / max(total, 1e-9):6.1%} {e.count // a.steps:6d}  {e.key[:150]}")
if a.cpu_rows:
    cev = sorted(p.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    cpu = sum(e.self_cpu_time_total for e in cev) / a.steps / 1e3
    lines += ['', f"host: self CPU time {cpu:.1f} ms/step (profiler-inflated)", f"{'ms/step':>8} {'calls':>6}  op"]
    lines += [f"{e.self_cpu_time_total / a.steps / 1e3:8.2f} {e.count // a.steps:6d}  {e.key[:120]}" for e in cev[:a.cpu_rows]]
if a.gaps and kev:   # idle GPU between kernels: many short ones are launch latency inside the graph, long ones the host
    kev.sort(); gaps, end, last = [], kev[0][1], kev[0][2]
    for s0, s1, n in kev[1:]:
        if s0 > end: gaps.append((s0 - end, last, n))
        if s1 >= end: end, last = s1, n
    lines += ['', f"idle gaps between kernels over {a.steps} steps (µs; ms/step per bucket)"]
    for lo, hi in ((0, 2), (2, 5), (5, 20), (20, 100), (100, float('inf'))):
        g = [d for d, _, _ in gaps if lo <= d < hi]
        lines.append(f"  [{lo}, {hi}) µs: {len(g) // a.steps:6d} a step, {sum(g) / a.steps / 1e3:6.2f} ms/step")
    lines += [f"{d:9.1f} µs  after {x[:70]}  before {y[:70]}" for d, x, y in sorted(gaps, reverse=True)[:a.gaps]]
if a.by_op:   # which op launched each kernel: its name, two enclosing ops and its input shapes
    from collections import defaultdict
    agg = defaultdict(lambda: [0.0, 0])
    for e in p.events():
        if e.device_type.name != 'CPU' or not e.kernels: continue
        chain, q = [e.name], e.cpu_parent
        while q is not None and len(chain) < 3: chain.append(q.name); q = q.cpu_parent
        for k in e.kernels:
            r = agg[(k.name[:70], ' < '.join(chain), str(e.input_shapes)[:110])]; r[0] += k.duration; r[1] += 1
    lines += ['', f"{'ms/step':>8} {'calls':>6}  kernel | launched by < parents | input shapes"]
    for (kn, ch, sh), (us, n) in sorted(agg.items(), key=lambda kv: -kv[1][0])[:a.by_op]:
        lines.append(f"{us / a.steps / 1e3:8.3f} {n // a.steps:6d}  {kn} | {ch[:140]} | {sh}")
    lines += ['', 'memsets and copies (each one a node of a captured graph):']
    lines += [f"{us / a.steps / 1e3:8.3f} {n // a.steps:6d}  {kn} | {ch[:140]} | {sh}"
              for (kn, ch, sh), (us, n) in sorted(agg.items(), key=lambda kv: -kv[1][1]) if kn.startswith(('Memset', 'Memcpy', 'memcpy'))]
txt = '\n'.join(lines); print(txt)
out = os.environ.get('OUT')
if out: open(os.path.join(out, f'e2e_kernels-{a.preset}{"-compile" if a.compile else ""}{"-graph" if a.graph else ""}{"-overlap" if a.overlap else ""}.txt'), 'w').write(txt + '\n')
