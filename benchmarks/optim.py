"""The optimizer step on one GPU at a preset's parameters: pithtrain's one-pass AdamW vs torch's fused AdamW.

Measured on the real model's parameters (fp32 masters, random fp32 gradients), with a clip factor handed over as a
device scalar (as `distributed.clipped_step` does), median of 10 timed steps (`bench.time_fn`: CUDA events between back-to-back steps) after 2 warm-up steps (the committed 2026-11-29 file was timed with a sync after each step):

- `torch fused + casts`: `torch.optim.AdamW(fused=True)` with `grad_scale`, then the bf16 casts of the weights the
  forward would cast (the ones marked by `core.keep_compute_copy`: stacked experts, LM head) — what a step cost before;
- `torch fused`: the optimizer kernel alone;
- `pithtrain AdamW (block B)`: `optim.AdamW`, one Triton pass per parameter that also writes the bf16 copies.

Bytes per step: torch fused reads p, g, m, v and writes p, m, v and the unscaled g (32 B/param), the casts read 4 and
write 2 B per copied weight; ours moves 28 B/param + 2 B per copied weight. GB/s = those bytes / time.

    python3 benchmarks/optim.py [--preset qwen3-30b-a3b-6l] [--out DIR]   # GPU: benchmarks/results/optim-DATE.json
"""
import argparse, datetime, json, os, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch
from pithtrain.qwen3_moe import Qwen3MoE, Qwen3MoEConfig
from pithtrain.optim import AdamW, param_groups
from pithtrain.bench import time_fn

def main(argv=None):
    ap = argparse.ArgumentParser(); ap.add_argument('--preset', default='qwen3-30b-a3b-6l'); ap.add_argument('--out', default=None)
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    with torch.device('cuda'): model = Qwen3MoE(Qwen3MoEConfig.preset(a.preset))
    ps = [p for p in model.parameters() if p.requires_grad]
    for p in ps: p.grad = torch.randn_like(p) * 1e-3
    marked = [p for p in ps if hasattr(p, 'compute_copy')]
    n, nc = sum(p.numel() for p in ps), sum(p.numel() for p in marked)
    gs = torch.tensor(1.7, device='cuda')
    rows = []
    def run(name, make, extra=None, nbytes=0):
        opt = make(); opt.grad_scale = gs
        def step():
            opt.step()
            if extra: extra()
        ms = time_fn(step, torch.device('cuda'), reps=10, warmup=2)
        rows.append(dict(name=name, ms=ms, gb=nbytes / 1e9, gb_per_s=nbytes / ms / 1e6))
        print(f"{name:32s} {ms:8.2f} ms  {nbytes / 1e9:7.1f} GB  {nbytes / ms / 1e6:7.0f} GB/s", flush=True)
        opt.state.clear(); del opt; torch.cuda.empty_cache()
    kw = dict(lr=3e-4, betas=(0.9, 0.95), eps=1e-8)
    casts = lambda: [p.detach().to(torch.bfloat16) for p in marked]
    run('torch fused + casts', lambda: torch.optim.AdamW(param_groups(model, 0.1), fused=True, **kw), casts, 32 * n + 6 * nc)
    run('torch fused', lambda: torch.optim.AdamW(param_groups(model, 0.1), fused=True, **kw), None, 32 * n)
    for blk in (1024, 2048, 4096):
        run(f'pithtrain AdamW (block {blk})', lambda: AdamW(param_groups(model, 0.1), block=blk, **kw), None, 28 * n + 2 * nc)
    res = dict(date=datetime.date.today().isoformat(), device=torch.cuda.get_device_name(), command='python3 benchmarks/optim.py ' + ' '.join(argv or sys.argv[1:]),
               preset=a.preset, params=n, copied_params=nc, versions=dict(torch=torch.__version__), rows=rows)
    for d in filter(None, [os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results'), a.out]):
        os.makedirs(d, exist_ok=True)
        json.dump(res, open(os.path.join(d, f"optim-{res['date']}.json"), 'w'), indent=1)
    return res

if __name__ == '__main__': main()
