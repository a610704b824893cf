"""`layers.qk_norm_rope`'s kernels at the end-to-end shapes, timed inside CUDA graphs (20 calls a replay: a call alone
is ≈ 60 µs of host work, longer than its kernels — the first version of this script timed eager calls and measured
the host: every tile of the `small` shape came out at 58–64 µs forward, 124–130 backward, 1.2–1.7 TB/s).

Rows: the forward by tile (tokens a program, warps) and the backward by NP, its programs a head (each walks every
NP-th token block and keeps one slot of Σ dn·x̂; a second launch of two programs sums the NP slots a head).
The previous library backward (one program and one slot a (token block, head), the 256 slots a head summed by two
torch reductions) ran 82.4 µs a call at `small` against 68.0 for NP = 16 with the two-program sum, 78.7 for NP = 16
with torch's sums, 72.1 / 80.8 at NP = 32 and 78.0 / 92.1 at NP = 64 (2026-11-29, the run that moved NP = 16 into the
library; the 0.24 ms a step of slot sums it removes are in `results/e2e_kernels-small-compile-graph-overlap-v15-…`).
Every NP must give the same dy as NP = 16 to bf16 rounding and the weight gradients to fp32 rounding.
GB/s = bytes the pass must move (forward: read y, write q, k, v; backward: read dq, dk, dv and y, write dy).

    PYTHONPATH=$PWD python3 benchmarks/qk_norm_rope.py                 # GPU; $OUT/qk_norm_rope.json
    TRITON_INTERPRET=1 python3 benchmarks/qk_norm_rope.py --cpu-smoke   # CPU: the NP variants against each other
"""
import os, sys, json, datetime, statistics
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch
import pithtrain.layers as L

def graph_us(fn, n=20, reps=5):
    "µs a call: n calls captured in one CUDA graph, replays timed by events (median of reps)."
    fn(); torch.cuda.synchronize()
    g, s = torch.cuda.CUDAGraph(), torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), torch.cuda.graph(g):
        for _ in range(n): fn()
    torch.cuda.current_stream().wait_stream(s); g.replay(); torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); g.replay(); b.record(); torch.cuda.synchronize(); ts.append(a.elapsed_time(b) * 1e3 / n)
    return statistics.median(ts)

def inputs(T, S, h, kvh, D, dev, dt=torch.bfloat16):
    g = torch.Generator(device=dev).manual_seed(0)
    y = torch.randn(T, (h + 2 * kvh) * D, device=dev, generator=g).to(dt)
    wq, wk = (1 + 0.3 * torch.randn(D, device=dev, generator=g) for _ in range(2))
    cos, sin = L.rope_cache(S, D, device=dev)
    dq, dk, dv = (torch.randn(T, n, D, device=dev, generator=g).to(dt) for n in (h, kvh, kvh))
    return y, wq, wk, cos, sin, dq, dk, dv

if __name__ == '__main__':
    smoke = '--cpu-smoke' in sys.argv
    dev = 'cpu' if smoke else 'cuda'
    SHAPES = ({'tiny': (75, 25, 4, 2, 16)} if smoke else
              {'small': (16384, 2048, 16, 4, 64), 'qwen3-30b-a3b-6l': (16384, 4096, 32, 4, 128)})   # (T, S, h, kvh, D)
    TILES = ((32, 4), (64, 4), (128, 4), (32, 2), (64, 8), (128, 8))
    res = {'date': str(datetime.date.today()), 'device': 'cpu' if smoke else torch.cuda.get_device_name(),
           'command': 'python3 benchmarks/qk_norm_rope.py', 'rows': []}
    if smoke: L._QKNR_TILES[16] = (16, 2)   # 5 token blocks: NP 1, 2, 3 walk different blocks
    for name, (T, S, h, kvh, D) in SHAPES.items():
        y, wq, wk, cos, sin, dq, dk, dv = inputs(T, S, h, kvh, D, dev, torch.float32 if smoke else torch.bfloat16)
        bwd = lambda NP: (setattr(L, '_QKNR_NP', NP), L._qknr_bwd(dq, dk, dv, y, wq, wk, cos, sin, S, 1e-6))[1]
        ref, runs = bwd(16), {}
        for NP in ((1, 2, 3) if smoke else (8, 16, 32)):
            out = bwd(NP)
            assert (out[0] - ref[0]).abs().max() <= 1e-2 * ref[0].abs().max() and all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(out[1:], ref[1:])), NP
            runs[('bwd', f'NP {NP}')] = (lambda NP=NP: bwd(NP))
        print(f'{name}: every NP agrees with NP = 16', flush=True)
        L._QKNR_NP = 16
        if smoke: continue
        for bt, nw in TILES:
            runs[('fwd', f'{bt}x{nw}')] = (lambda bt=bt, nw=nw: (L._QKNR_TILES.__setitem__(D, (bt, nw)), L._qknr(y, wq, wk, cos, sin, S, h, kvh, 1e-6), L._QKNR_TILES.pop(D)))
        nbytes = {'fwd': 2 * y.numel() * 2, 'bwd': 3 * y.numel() * 2}
        ts = {k: [] for k in runs}
        for _ in range(3):
            for k, fn in runs.items(): ts[k].append(graph_us(fn))
        for (part, var), t in ts.items():
            us = statistics.median(t)
            row = dict(preset=name, part=part, variant=var, us_median=round(us, 1), gb_s=round(nbytes[part] / us / 1e3), us=[round(x, 1) for x in t])
            res['rows'].append(row); print(row, flush=True)
    if os.environ.get('OUT') and not smoke: json.dump(res, open(os.path.join(os.environ['OUT'], 'qk_norm_rope.json'), 'w'), indent=1)
