"""Where `trainer.train`'s step goes, on the real loop (real batches, the finite check, logging): the host time of each
call (median over steps 60-230) and, over six steps under torch.profiler (151-156), the GPU's busy time (union of kernel
intervals) and its kernels. A large `read_wait` (the host waiting for the step's finite flag) says the GPU is the
bottleneck, and the kernel table then says what it does that the benchmark's step (`ab_steps.py`) does not.

    PYTHONPATH=$PWD python3 benchmarks/train_profile.py [field=value ...]   # GPU: $OUT/train_profile-$TAG.json
    (WAIT=2 LO=1: profile from step 3 and count host times from step 1, for a short CPU check with preset=tiny)

Found with it (2026-11-30): on the built-in corpus (byte tokens) the embedding's backward took 1.6 ms of `small`'s
step, one program walking all ≈ 4000 tokens of the space; see `04_layers`, "Token embedding".
"""
import os, sys, time, json, shutil, statistics, collections
from torch.profiler import profile, ProfilerActivity, schedule
import pithtrain.trainer as T, pithtrain.data as D
from pithtrain.trainer import TrainConfig
from pithtrain.cli import parse_value

args = dict(preset='small', batch_size=8, seq_len=2048, steps=240, lr=1e-3, warmup=60, schedule='cosine', data_max_mb=None,
            eval_every=0, log_every=20, plots=False, compile=True, cuda_graph=True, overlap_optimizer=True, run_dir='/tmp/runs/diag-' + os.environ.get('TAG', 'diag'))
for kv in sys.argv[1:]:
    k, v = kv.split('=', 1); args[k] = parse_value(v)
shutil.rmtree(args['run_dir'], ignore_errors=True)   # a fresh run, not a resume
tag = os.environ.get('TAG', 'diag')
times, step_no = collections.defaultdict(list), [0]
def timed(name, fn):
    def w(*a, **k):
        t = time.perf_counter(); r = fn(*a, **k); times[name].append((step_no[0], time.perf_counter() - t)); return r
    return w
prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], schedule=schedule(wait=int(os.environ.get("WAIT", 150)), warmup=2, active=6, repeat=1))
orig_nb = D.Loader.next_batch
def nb(self, *a, **k):
    step_no[0] += 1; prof.step()
    t = time.perf_counter(); r = orig_nb(self, *a, **k); times['next_batch'].append((step_no[0], time.perf_counter() - t)); return r
D.Loader.next_batch = nb
T.GraphedStep.__call__ = timed('graph_call', T.GraphedStep.__call__)
T.clip_grad_norm_ = timed('clip_grad_norm', T.clip_grad_norm_)
T.clipped_step = timed('clipped_step', T.clipped_step)
orig_rl = T._read_later
def rl(x, buf):
    f = orig_rl(x, buf)
    return timed('read_wait', f)
T._read_later = rl
prof.start()
s = T.train(TrainConfig(**args), progress=False)
prof.stop()
print('summary tokens/s', s['tokens_per_s'], T.__file__)
import pithtrain
res = {'tag': tag, 'pithtrain': pithtrain.__file__, 'args': {k: str(v) for k, v in args.items()}, 'tokens_per_s': s['tokens_per_s'], 'host_ms': {}}
for k, v in times.items():
    xs = [d * 1e3 for st, d in v if int(os.environ.get("LO", 60)) <= st <= 230]
    if xs: res['host_ms'][k] = dict(median=round(statistics.median(xs), 3), mean=round(statistics.fmean(xs), 3), n=len(xs))
# GPU busy over the profiled steps
evs = [e for e in prof.events() if e.device_type.name == 'CUDA' and e.name not in ('ProfilerStep*',) and not e.name.startswith('Optimizer.') and not e.name.startswith('ProfilerStep')]
iv = sorted((e.time_range.start, e.time_range.end) for e in evs)
busy, cur = 0.0, None
for a, b in iv:
    if cur is None or a > cur[1]:
        if cur: busy += cur[1] - cur[0]
        cur = [a, b]
    else: cur[1] = max(cur[1], b)
if cur: busy += cur[1] - cur[0]
span = (iv[-1][1] - iv[0][0]) if iv else 0
gaps = []
cur_end = None
for a, b in iv:
    if cur_end is not None and a > cur_end: gaps.append(a - cur_end)
    cur_end = b if cur_end is None else max(cur_end, b)
gaps.sort(reverse=True)
res['profile'] = dict(kernels_span_ms=span / 1e3, busy_ms=busy / 1e3, steps=6, busy_ms_per_step=busy / 6e3, span_ms_per_step=span / 6e3,
                      largest_gaps_us=[round(g, 1) for g in gaps[:15]], gaps_over_20us_ms=sum(g for g in gaps if g > 20) / 1e3)
kt = collections.defaultdict(float); kn = collections.Counter()
for e in evs: kt[e.name[:90]] += (e.time_range.end - e.time_range.start) / 1e3 / 6; kn[e.name[:90]] += 1
res['kernels_ms_per_step'] = [(k, round(v, 3), kn[k] // 6) for k, v in sorted(kt.items(), key=lambda kv: -kv[1])[:30]]
# host: the biggest CPU ops
ka = prof.key_averages()
res['cpu_top'] = [(e.key, round(e.self_cpu_time_total / 1e3 / 6, 3), e.count // 6) for e in sorted(ka, key=lambda e: -e.self_cpu_time_total)[:25]]
print(json.dumps(res, indent=1))
out = os.environ.get('OUT')
if out: json.dump(res, open(os.path.join(out, f'train_profile-{tag}.json'), 'w'), indent=1)
