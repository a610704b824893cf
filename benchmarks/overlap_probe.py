"""Probe for a next lever: can the memory-bound AdamW step run beside the compute-bound forward on one GPU?

The fp32-master AdamW step (≈ 31 ms at `qwen3-30b-a3b-6l`, at the memory bandwidth) runs after the backward and
before the next forward. The next forward of layer i only needs layer i's updated weights, so the update could run
on a side stream in layer order while the forward proceeds on the main stream, each layer waiting for its own
update. Whether that buys anything depends on how well the two kinds of kernels share the SMs. This probe measures
it without touching the trainer: (a) the forward alone (bf16 autocast, no grad), (b) the optimizer step alone,
(c) both launched together — the step on a low-priority side stream, the forward on a high-priority stream — timed
until both finish. overlap = (a + b − c) / min(a, b): 0 means no gain, 1 means the shorter one is fully hidden.
(It ignores the per-layer waits a real implementation needs, so it is an upper bound.)

`--green-sms 16 32 48` repeats (b) and (c) with the step's stream in a CUDA green context of that many SMs (torch's
`torch.cuda.green_contexts`): the step confined to a slice of the GPU, the forward free to use the rest — how fast the
step runs on a slice, and whether the two then overlap better. Measured (session 17, `small`,
`results/overlap_probe-green-2026-11-30.json`): the step takes 23.2 / 12.4 / 9.1 ms on 16 / 32 / 48 SMs against 6.7
on all (≈ 70 GB/s an SM), and beside the forward overlaps worse (0.15 / 0.17 / 0.03 against 0.34): not taken.

    python3 benchmarks/overlap_probe.py [--preset qwen3-30b-a3b-6l] [--green-sms N ...] [--out DIR]   # GPU only
"""
import argparse, datetime, json, os, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch
from pithtrain.qwen3_moe import Qwen3MoE, Qwen3MoEConfig
from pithtrain.optim import AdamW, param_groups
from pithtrain.bench import BATCH, time_fn

_GREEN = []   # the green contexts made here, kept alive for their streams

def green_stream(n:int, device_id:int)->torch.cuda.Stream:
    "A stream whose kernels run on n SMs only: a CUDA green context's (`torch.cuda.green_contexts`, beta)."
    from torch.cuda.green_contexts import GreenContext
    ctx = GreenContext.create(num_sms=n, device_id=device_id); _GREEN.append(ctx)
    if hasattr(ctx, 'Stream'): return ctx.Stream()
    ctx.set_context(); s = torch.cuda.Stream(); ctx.pop_context()   # torch 2.10's API: a stream made while it is current
    return s

def main(argv=None):
    ap = argparse.ArgumentParser(); ap.add_argument('--preset', default='qwen3-30b-a3b-6l'); ap.add_argument('--out', default=None)
    ap.add_argument('--green-sms', type=int, nargs='*', default=[])
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    c = Qwen3MoEConfig.preset(a.preset); B, S = BATCH[a.preset]
    with torch.device('cuda'): model = Qwen3MoE(c)
    ids = torch.randint(0, c.vocab_size, (B, S), device='cuda')
    for p in model.parameters(): p.grad = torch.randn_like(p) * 1e-3
    opt = AdamW(param_groups(model, 0.1), lr=3e-4, betas=(0.9, 0.95)); opt.grad_scale = torch.tensor(1.5, device='cuda')
    lo, hi = torch.cuda.Stream(priority=0), torch.cuda.Stream(priority=-1)
    def fwd():
        with torch.no_grad(), torch.autocast('cuda', dtype=torch.bfloat16): model(ids, ids)
    def both(lo=lo):
        main = torch.cuda.current_stream()
        lo.wait_stream(main); hi.wait_stream(main)
        with torch.cuda.stream(lo): opt.step()
        with torch.cuda.stream(hi): fwd()
        main.wait_stream(lo); main.wait_stream(hi)
    timed = lambda fn: time_fn(fn, torch.device('cuda'), reps=5, warmup=2)
    tf, to = timed(fwd), timed(opt.step)
    tc = timed(both)
    ov = (tf + to - tc) / min(tf, to)
    print(f"forward {tf:.1f} ms, optimizer {to:.1f} ms, together {tc:.1f} ms: overlap {ov:.2f}", flush=True)
    res = dict(date=datetime.date.today().isoformat(), device=torch.cuda.get_device_name(), preset=a.preset,
               command='python3 benchmarks/overlap_probe.py ' + ' '.join(argv or sys.argv[1:]),
               forward_ms=tf, optimizer_ms=to, together_ms=tc, overlap=ov, green=[])
    for n in a.green_sms:
        gs = green_stream(n, torch.cuda.current_device())
        def step_on(s=gs):
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s): opt.step()
            torch.cuda.current_stream().wait_stream(s)
        tg, tcg = timed(step_on), timed(lambda: both(gs))
        ovg = (tf + tg - tcg) / min(tf, tg)
        print(f"green context of {n} SMs: optimizer {tg:.1f} ms, together {tcg:.1f} ms: overlap {ovg:.2f}", flush=True)
        res['green'].append(dict(sms=n, optimizer_ms=tg, together_ms=tcg, overlap=ovg))
    for d in filter(None, [os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results'), a.out]):
        os.makedirs(d, exist_ok=True); json.dump(res, open(os.path.join(d, f"overlap_probe-{res['date']}.json"), 'w'), indent=1)
    return res

if __name__ == '__main__': main()
