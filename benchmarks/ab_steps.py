"""pithtrain's compiled + graphed step alone (no HF, no eager run), for same-call A/B comparisons of code versions.

    python3 benchmarks/ab_steps.py --tag new --variants graph overlap   # GPU; run again in a worktree of the old commit
"""
import os, sys, json, argparse, datetime
sys.path.insert(0, os.getcwd())   # the code version of the directory it is run from
import torch
from pithtrain.bench import pithtrain_step, measure, BATCH
try: from pithtrain.bench import GpuSampler
except ImportError: GpuSampler = None   # an older tree, for an A/B against a commit before it
from pithtrain.qwen3_moe import Qwen3MoEConfig
import pithtrain.optim as O

ap = argparse.ArgumentParser()
ap.add_argument('--presets', nargs='+', default=['small', 'qwen3-30b-a3b-6l'], choices=list(BATCH))
ap.add_argument('--variants', nargs='+', default=['graph'], choices=['graph', 'overlap', 'overlap-hi', 'overlap-green', 'overlap-hybrid', 'overlap-main', 'overlap-early', 'overlap-main-bf16', 'graph-bf16', 'overlap-bf16', 'graph-fused', 'overlap-fused'])   # bf16: AdamW moments; fused: the experts' AdamW in their backward (no clipping; needs benchmarks/fused_adamw.patch)
ap.add_argument('--steps', type=int, default=15)
ap.add_argument('--warmup', type=int, default=3)
ap.add_argument('--tag', default='run')
a = ap.parse_args()
dev = torch.device('cuda')
import pithtrain.experts as X   # the Gluon kernels' configurations from the environment, for same-call comparisons:
env = lambda k: tuple(int(x) for x in os.environ[k].split(',')) if os.environ.get(k) else None
if env('PMM_CFG'): X._WS_CFG, X._WS_CS = env('PMM_CFG')[:4], env('PMM_CFG')[4]   # (BM, BN, BK, slots, store chunks)
if env('WG_CFG'): X._WS_WG_CFG = env('WG_CFG')                                     # (BM, BN, BK, slots)
if env('FC1_CFG'): X._WS_FC1_CFG = env('FC1_CFG')                                  # (BH, BK, slots, output buffers)
if env('NPROG'): X._nprog = lambda dev: env('NPROG')[0]   # persistent products on fewer SMs (with overlap-green: the rest)
if env('FWD_NPROG'):   # the forward's persistent products only (fc1, fc2) on fewer SMs: the rest free for the side stream's
    _np = X._nprog     # AdamW, which cannot share an SM with them (they fill its registers); the backward keeps all SMs
    X._nprog = lambda dev: env('FWD_NPROG')[0] if torch._C._current_graph_task_id() == -1 else _np(dev)
    # measured 2026-11-30 (results/ab_steps-fwdnprog-2026-11-30.json, small, overlap): unset 44.62 / 44.46 / 44.59 ms,
    # 120 → 44.63 / 44.65, 124 → 44.70, 112 → 44.85 / 45.04: no gain, the library keeps all SMs
_ov = O.AdamW.overlap
def _hi(self, stages, device):   # 'overlap-hi': the side stream at high priority
    ev = _ov(self, stages, device); self.side = torch.cuda.Stream(device, priority=-1); return ev
def _green(self, stages, device):   # 'overlap-green': the side stream in a CUDA green context of GREEN_SMS SMs (default 32):
    ev = _ov(self, stages, device)  # AdamW confined to a slice of the GPU, the forward never loses more than that slice
    from overlap_probe import green_stream   # (pithtrain is imported already: its sys.path entry changes nothing)
    self.side = green_stream(int(os.environ.get('GREEN_SMS', '32')), device.index or 0)
    return ev
def _hybrid(self, stages, device):   # 'overlap-hybrid': the first FULL_STAGES stages (default 2: the embedding and block 0, which
    ev = _ov(self, stages, device)   # the forward waits for at once) on an ordinary side stream over all SMs, the rest in a
    from overlap_probe import green_stream   # green context of GREEN_SMS SMs beside the forward (with FWD_NPROG = 132 − GREEN_SMS
    self.green = green_stream(int(os.environ.get('GREEN_SMS', '32')), device.index or 0)   # the forward's products leave them free)
    return ev
def _staged_hybrid(self, gs):   # `AdamW._staged_step` with the stages split over the two streams (they update disjoint parameters)
    nfull = int(os.environ.get('FULL_STAGES', '2'))
    grp = {id(p): g for g in self.param_groups for p in g['params']}
    seen = {id(p) for s in self.stages for p in s}
    rest = [p for g in self.param_groups for p in g['params'] if id(p) not in seen]
    cur = torch.cuda.current_stream()
    for s in (self.side, self.green):
        s.wait_stream(cur)
        if gs is not None: gs.record_stream(s)
    for i, (stage, ev) in enumerate(zip(self.stages, self.events)):
        s = self.side if i < nfull else self.green
        with torch.cuda.stream(s):
            todo = [(p, self._hp(grp[id(p)])) for p in (stage + rest if i == len(self.stages) - 1 else stage)
                    if p.grad is not None and id(p) in grp]
            for p, _ in todo: p.grad.record_stream(s)
            self._update_all(todo, gs)
            ev.record()
_sstep = O.AdamW._staged_step   # measured 2026-11-30 (results/ab_steps-hybrid-2026-11-30.json, small): overlap 44.81-45.10 ms;
# hybrid 24 → 48.68, 32 → 45.92 / 45.65, 40 → 44.53 / 45.14 / 44.59, 48 → 45.09 / 45.00 (44.90 batched), 56 → 45.79 / 45.88,
# 64 → 46.35: level at best; AdamW confined to n SMs becomes the forward's critical path below 40, the products lose above
import pithtrain.trainer as T
for kv in filter(None, os.environ.get('INDUCTOR', '').split(',')):   # e.g. INDUCTOR=split_reductions=0 or triton.x=64: Inductor's config
    import torch._inductor.config as IC; k, v = kv.split('='); *path, k = k.split('.'); cfg = IC
    for part in path: cfg = getattr(cfg, part)
    old = getattr(cfg, k); setattr(cfg, k, (int(v) if v.isdigit() else v) if old is None else type(old)(int(v) if v.isdigit() else v))
if os.environ.get('PDL_ADAMW') == '0':   # with PITHTRAIN_PDL=1: the side stream's AdamW kernels launched without PDL
    O.pdl = lambda: dict(PDL=False, launch_pdl=False)
if os.environ.get('ADAMW_BATCH'):   # AdamW's parameters under this many elements in one launch a stage (`batch_below`)
    _ainit = O.AdamW.__init__
    def _binit(self, *a, **k): _ainit(self, *a, **k); self.batch_below = int(os.environ['ADAMW_BATCH'])
    O.AdamW.__init__ = _binit
if os.environ.get('QKNR') == '0':   # q/k norm + RoPE by the separate modules (compiled), not `layers.qk_norm_rope`
    import pithtrain.layers as LY; LY.FUSED_QK_NORM_ROPE = False
if os.environ.get('TUNE') == '0':   # Inductor without its coordinate-descent tuning (`compile_dense(tune=False)`)
    _cd = T.compile_dense; T.compile_dense = lambda model, tune=True, **kw: _cd(model, tune=False, **kw)
_call = T.GraphedStep.__call__
def _main_hi(self, batches):   # 'overlap-main': the graph replayed on a high-priority stream (AdamW's side stream stays low)
    if not hasattr(self, '_hs'): self._hs = torch.cuda.Stream(self.device, priority=-1)
    cur = torch.cuda.current_stream(self.device); self._hs.wait_stream(cur)
    with torch.cuda.stream(self._hs): out = _call(self, batches)
    cur.wait_stream(self._hs); return out
_gov = T.GraphedStep._overlap
def _early(self, opt):   # 'overlap-early': each block's wait for its update forked one block ahead, beside the previous block
    targets, stages = self._stages()   # (the kernel table shows ≈ 6.5 µs before each block's first kernel: the event's wait node)
    events, b = opt.overlap(stages, self.device), torch.cuda.Stream(self.device)
    def hook(i):
        def pre(_m, _a):
            cur = torch.cuda.current_stream()
            if i == 0: cur.wait_event(events[0])
            else: cur.wait_stream(b)                 # joins the branch that waited for events[i]
            if i + 1 < len(targets):                 # fork: the wait for the next block's update runs beside this block
                b.wait_stream(cur)
                with torch.cuda.stream(b): b.wait_event(events[i + 1])
        return pre
    for i, mod in enumerate(targets): mod.register_forward_pre_hook(hook(i))
    return events
rows = []
gkw = dict(gpu=GpuSampler(dev)) if GpuSampler else {}   # each row keeps its SM clock and power: the step runs at the 700 W cap
for p in a.presets:
    c = Qwen3MoEConfig.preset(p); B, S = BATCH[p]
    for v in a.variants:
        O.AdamW.overlap = _hi if v == 'overlap-hi' else _green if v == 'overlap-green' else _hybrid if v == 'overlap-hybrid' else _ov
        O.AdamW._staged_step = _staged_hybrid if v == 'overlap-hybrid' else _sstep
        T.GraphedStep._overlap = _early if v == 'overlap-early' else _gov
        T.GraphedStep.__call__ = _main_hi if v.startswith('overlap-main') else _call
        kw = dict(state_dtype=torch.bfloat16) if v.endswith('bf16') else dict(fused=True) if v.endswith('fused') else {}   # (older code versions take neither)
        r = measure(f'pithtrain+compile+graph+{v}', lambda: pithtrain_step(c, B, S, dev, compile=True, graph=True, overlap=v.startswith('overlap'), **kw),
                    c, B, S, a.steps, a.warmup, dev, **gkw)
        r.update(preset=p, variant=v, tag=a.tag); rows.append(r)
        print(f"{a.tag:6s} {p:18s} {v:11s} median {r['median_ms']:7.2f} ms  mean {r['mean_ms']:7.2f}  {r['tokens_per_s']:9.0f} tok/s  "
              f"act {r['activation_mem_gb']:.2f} GB  peak {r['peak_mem_gb']:.2f} GB  {r.get('gpu')}", flush=True)
out = os.environ.get('OUT')
res = dict(date=datetime.date.today().isoformat(), device=torch.cuda.get_device_name(), command='python3 benchmarks/ab_steps.py ' + ' '.join(sys.argv[1:]),
           cwd=os.getcwd(), rows=rows)
if out: json.dump(res, open(os.path.join(out, f'ab_steps-{a.tag}.json'), 'w'), indent=1, default=str)
