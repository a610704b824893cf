"""Burst against sustained speed: the e2e benchmark times 10 steps after a short warm-up (as hf_anchor.py does); a
training run keeps the GPU busy for hours. Under a 700 W cap the H200 lowers its SM clock once a sustained load
draws more. This runs pithtrain's fastest step (compiled, graphed, AdamW beside the forward) and HF's for many steps
each, the GPU sampled by nvidia-smi every 100 ms, and reports the median step of the first 10 steps and of the
steps after `--settle`, with the SM clock and the power drawn in each window.

    PYTHONPATH=$PWD python3 benchmarks/sustained.py --preset small   # GPU: $OUT/sustained-PRESET.json
"""
import os, sys, time, json, argparse, datetime, itertools, statistics
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch
from pithtrain.bench import BATCH, pithtrain_step, hf_step, _free, GpuSampler
from pithtrain.qwen3_moe import Qwen3MoEConfig

ap = argparse.ArgumentParser()
ap.add_argument('--preset', default='small', choices=list(BATCH))
ap.add_argument('--steps', type=int, nargs=2, default=[300, 120], help='steps of pithtrain, of HF')
ap.add_argument('--settle', type=float, default=5.0, help='seconds after which a step counts as sustained')
ap.add_argument('--cool', type=float, default=15.0, help='idle seconds before each measurement')
a = ap.parse_args()
dev = torch.device('cuda')
c = Qwen3MoEConfig.preset(a.preset); B, S = BATCH[a.preset]
gpu = GpuSampler(dev)

def run(name, build, n, warmup):
    time.sleep(a.cool)
    model, opt, step = build()
    for _ in range(warmup): step()
    torch.cuda.synchronize()
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(n + 1)]
    t0 = time.time(); ev[0].record()
    for i in range(n):
        step()
        if i == n - 1 and getattr(step, 'join', None): step.join()
        ev[i + 1].record()
    torch.cuda.synchronize(); t1 = time.time()
    ms = [x.elapsed_time(y) for x, y in zip(ev, ev[1:])]
    ends = [t0 + e / 1e3 for e in itertools.accumulate(ms)]   # wall time at each step's end, from the GPU's own times
    first, late = ms[:10], [m for m, e in zip(ms, ends) if e - t0 > a.settle]
    r = dict(name=name, steps=n, first10_median_ms=round(statistics.median(first), 3),
             sustained_median_ms=round(statistics.median(late), 3) if late else None, sustained_steps=len(late),
             first10_tokens_per_s=round(B * S / statistics.median(first) * 1e3), sustained_tokens_per_s=round(B * S / statistics.median(late) * 1e3) if late else None,
             gpu_first10=gpu.window(t0, ends[9]), gpu_sustained=gpu.window(t0 + a.settle, t1), step_ms=[round(m, 3) for m in ms])
    print(f"{name:12s} first 10: {r['first10_median_ms']:8.2f} ms {r['gpu_first10']}   after {a.settle:.0f} s: {r['sustained_median_ms']} ms "
          f"{r['gpu_sustained']}", flush=True)
    del model, opt, step; _free(dev)
    return r

rows = [run('pithtrain', lambda: pithtrain_step(c, B, S, dev, compile=True, graph=True, overlap=True), a.steps[0], 3),
        run('hf', lambda: hf_step(c, B, S, dev), a.steps[1], 4)]
gpu.close()
ratio = lambda k: rows[1][k] / rows[0][k] if rows[0][k] and rows[1][k] else None
res = dict(date=datetime.date.today().isoformat(), device=torch.cuda.get_device_name(), preset=a.preset,
           command='python3 benchmarks/sustained.py ' + ' '.join(sys.argv[1:]), ratio_first10=ratio('first10_median_ms'),
           ratio_sustained=ratio('sustained_median_ms'), rows=rows)
print('ratio (HF ms / pithtrain ms): first 10 steps', res['ratio_first10'], ' sustained', res['ratio_sustained'])
out = os.environ.get('OUT')
if out: json.dump(res, open(os.path.join(out, f'sustained-{a.preset}.json'), 'w'), indent=1)
