"""pithtrain's compiled + graphed step alone (no HF, no eager run), for same-call A/B comparisons of code versions.

    python3 benchmarks/ab_steps.py --tag new --variants graph overlap   # GPU; run again in a worktree of the old commit
"""
import os, sys, json, argparse, datetime
sys.path.insert(0, os.getcwd())   # the code version of the directory it is run from
import torch
from pithtrain.bench import pithtrain_step, measure, BATCH
from pithtrain.qwen3_moe import Qwen3MoEConfig
import pithtrain.optim as O

ap = argparse.ArgumentParser()
ap.add_argument('--presets', nargs='+', default=['small', 'qwen3-30b-a3b-6l'], choices=list(BATCH))
ap.add_argument('--variants', nargs='+', default=['graph'], choices=['graph', 'overlap', 'overlap-hi', 'overlap-main', 'overlap-main-bf16', 'graph-bf16', 'overlap-bf16', 'graph-fused', 'overlap-fused'])   # bf16: AdamW moments; fused: the experts' AdamW in their backward (no clipping; needs benchmarks/fused_adamw.patch)
ap.add_argument('--steps', type=int, default=15)
ap.add_argument('--warmup', type=int, default=3)
ap.add_argument('--tag', default='run')
a = ap.parse_args()
dev = torch.device('cuda')
if os.environ.get('PMM_CFG'):   # experts._WS_CFG + _WS_CS (BM, BN, BK, slots, store chunks) for a same-call comparison
    import pithtrain.experts as X; v = [int(x) for x in os.environ['PMM_CFG'].split(',')]; X._WS_CFG, X._WS_CS = tuple(v[:4]), v[4]
if os.environ.get('WG_CFG'):   # experts._WS_WG_CFG (BM, BN, BK, slots)
    import pithtrain.experts as X; X._WS_WG_CFG = tuple(int(x) for x in os.environ['WG_CFG'].split(','))
if os.environ.get('FC1_CFG'):   # experts._WS_FC1_CFG (BH, BK, slots, output buffers) for a same-call comparison
    import pithtrain.experts as X; X._WS_FC1_CFG = tuple(int(v) for v in os.environ['FC1_CFG'].split(','))
_ov = O.AdamW.overlap
def _hi(self, stages, device):   # 'overlap-hi': the side stream at high priority
    ev = _ov(self, stages, device); self.side = torch.cuda.Stream(device, priority=-1); return ev
import pithtrain.trainer as T
_call = T.GraphedStep.__call__
def _main_hi(self, batches):   # 'overlap-main': the graph replayed on a high-priority stream (AdamW's side stream stays low)
    if not hasattr(self, '_hs'): self._hs = torch.cuda.Stream(self.device, priority=-1)
    cur = torch.cuda.current_stream(self.device); self._hs.wait_stream(cur)
    with torch.cuda.stream(self._hs): out = _call(self, batches)
    cur.wait_stream(self._hs); return out
rows = []
for p in a.presets:
    c = Qwen3MoEConfig.preset(p); B, S = BATCH[p]
    for v in a.variants:
        O.AdamW.overlap = _hi if v == 'overlap-hi' else _ov
        T.GraphedStep.__call__ = _main_hi if v.startswith('overlap-main') else _call
        kw = dict(state_dtype=torch.bfloat16) if v.endswith('bf16') else dict(fused=True) if v.endswith('fused') else {}   # (older code versions take neither)
        r = measure(f'pithtrain+compile+graph+{v}', lambda: pithtrain_step(c, B, S, dev, compile=True, graph=True, overlap=v.startswith('overlap'), **kw),
                    c, B, S, a.steps, a.warmup, dev)
        r.update(preset=p, variant=v, tag=a.tag); rows.append(r)
        print(f"{a.tag:6s} {p:18s} {v:11s} median {r['median_ms']:7.2f} ms  mean {r['mean_ms']:7.2f}  {r['tokens_per_s']:9.0f} tok/s  "
              f"act {r['activation_mem_gb']:.2f} GB  peak {r['peak_mem_gb']:.2f} GB", flush=True)
out = os.environ.get('OUT')
res = dict(date=datetime.date.today().isoformat(), device=torch.cuda.get_device_name(), command='python3 benchmarks/ab_steps.py ' + ' '.join(sys.argv[1:]),
           cwd=os.getcwd(), rows=rows)
if out: json.dump(res, open(os.path.join(out, f'ab_steps-{a.tag}.json'), 'w'), indent=1, default=str)
