"""Energy per unit of work of the step's kernel kinds under the H200's 700 W cap (see benchmarks/sustained.py: the
`small` step draws the cap after a few seconds and the SM clock falls to ≈ 1600 MHz, HF's step does not).

Each kind runs for `--secs` seconds as replays of a CUDA graph of `--calls` launches, nvidia-smi sampling the GPU every
100 ms; the row gives the work rate over the last two thirds, the mean SM clock and power there, and the energy per
unit (pJ per FLOP, or per byte moved). Kinds, at `small`'s expert shape (131072 rows, 64 experts of 2048, K = N = 1024):
our Gluon grouped product (`experts._pmm_ws`), torch's `_grouped_mm` (CUTLASS), cuBLAS on the same rows as one dense
product, cuDNN attention forward + backward (8 × 2048, 16 / 4 heads of 64), a copy kernel and the AdamW kernel.

    PYTHONPATH=$PWD python3 benchmarks/energy.py   # GPU: $OUT/energy.json
"""
import os, sys, time, json, argparse, datetime
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch, torch.nn.functional as F
from pithtrain import experts as X
from pithtrain.bench import GpuSampler

ap = argparse.ArgumentParser()
ap.add_argument('--secs', type=float, default=4.0)
ap.add_argument('--calls', type=int, default=10)
ap.add_argument('--cool', type=float, default=4.0)
a = ap.parse_args()
dev, bf = torch.device('cuda'), torch.bfloat16
gpu = GpuSampler(dev)

rows = []
def run(name, fn, work, unit):
    "Replay a graph of `calls` × fn() for `secs` s; `work` units (FLOP or bytes) per call."
    try: _run(name, fn, work, unit)
    except Exception as e: rows.append(dict(name=name, error=repr(e)[:300])); print(name, 'failed:', repr(e)[:300], flush=True)

def _run(name, fn, work, unit):
    fn(); torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(a.calls): fn()
    time.sleep(a.cool)
    g.replay(); torch.cuda.synchronize()
    t0 = time.time(); marks = []
    while time.time() - t0 < a.secs:
        e = torch.cuda.Event(enable_timing=True); e.record(); marks.append((time.time(), e))
        g.replay()
        e.synchronize()   # the previous replay done: the host is at most one replay ahead, so its clock places the samples
    e = torch.cuda.Event(enable_timing=True); e.record(); torch.cuda.synchronize(); t1 = time.time()
    marks.append((t1, e))
    cut = t0 + (t1 - t0) / 3   # the last two thirds: the clock has settled
    i = next(j for j, (t, _) in enumerate(marks) if t >= cut)
    ms = marks[i][1].elapsed_time(marks[-1][1]); n = (len(marks) - 1 - i) * a.calls
    if n == 0: raise ValueError(f'no replay in the last two thirds of {a.secs} s: give --secs more')
    rate = n * work / (ms / 1e3)
    g = gpu.window(marks[i][0], t1)
    r = dict(name=name, unit=unit, us_per_call=round(ms * 1e3 / n, 1), rate=rate, sm_mhz=g['sm_mhz'], power_w=g['power_w'],
             pj_per_unit=round(g['power_w'] / rate * 1e12, 4), samples=g['samples'])
    rows.append(r)
    print(f"{name:44s} {r['us_per_call']:9.1f} µs  {rate / 1e12:7.1f} T{unit}/s  {r['sm_mhz']:5d} MHz  {r['power_w']:6.1f} W  "
          f"{r['pj_per_unit']:.4f} pJ/{unit}", flush=True)

E, R, K, NO = 64, 2048, 1024, 1024
N = E * R
torch.manual_seed(0)
x = torch.randn(N, K, device=dev, dtype=bf)
w = torch.randn(E, K, NO, device=dev, dtype=bf) * K ** -0.5
c = torch.empty(N, NO, device=dev, dtype=bf)
offs = torch.arange(0, N + 1, R, device=dev, dtype=torch.int32)
table = X._tile_table(offs, N, X._WS_CFG[0])
flop = 2 * N * K * NO
run('gluon grouped product (_pmm_ws)', lambda: X._pmm_ws(x, offs, w, c, K, NO, False, table), flop, 'FLOP')
run('torch._grouped_mm (CUTLASS)', lambda: torch._grouped_mm(x, w, offs=offs[1:], out_dtype=bf), flop, 'FLOP')
wd = w[0].contiguous()
run('cuBLAS dense, same rows', lambda: torch.mm(x, wd, out=c), flop, 'FLOP')
del w, c
B, S, NQ, NKV, D = 8, 2048, 16, 4, 64
q = torch.randn(B, NQ, S, D, device=dev, dtype=bf, requires_grad=True)
kk = torch.randn(B, NKV, S, D, device=dev, dtype=bf, requires_grad=True)
v = torch.randn(B, NKV, S, D, device=dev, dtype=bf, requires_grad=True)
go = torch.randn(B, NQ, S, D, device=dev, dtype=bf)
from torch.nn.attention import sdpa_kernel, SDPBackend
def att():
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        o = F.scaled_dot_product_attention(q, kk, v, is_causal=True, enable_gqa=True)
    torch.autograd.grad(o, (q, kk, v), go)
run('cuDNN attention fwd + bwd (causal)', att, 3.5 * 4 * B * S * S * NQ * D / 2, 'FLOP')
del q, kk, v, go
src = torch.randn(400_000_000, device=dev); dst = torch.empty_like(src)
run('copy by a kernel (fp32, x · 1)', lambda: torch.mul(src, 1.0, out=dst), 8 * src.numel(), 'B')   # copy_ would be a DMA node
del src, dst
from adamw_sm_share import state, lib_update   # the library's kernel at the probes' numbers (benchmarks/ is on sys.path)
n = E * K * NO   # one `small` layer's w1 in fp32: 30 bytes a parameter (4 read, 3 written fp32 + a bf16 copy)
st = state(n, dev)
run('AdamW (optim._adamw_kernel), fp32 state', lambda: lib_update(st), 30 * n, 'B')
gpu.close()
res = dict(date=datetime.date.today().isoformat(), device=torch.cuda.get_device_name(), command='python3 benchmarks/energy.py ' + ' '.join(sys.argv[1:]),
           note='pJ per unit = mean power / work rate over the last two thirds of each run (bench.GpuSampler: nvidia-smi every 100 ms)', rows=rows)
out = os.environ.get('OUT')
if out: json.dump(res, open(os.path.join(out, 'energy.json'), 'w'), indent=1)
