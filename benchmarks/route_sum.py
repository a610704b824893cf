"""The router's partial sums (`router._route_sum_kernel`) by tile, inside CUDA graphs.

The forward kernel writes one row of partial counts and probability sums per program (T / BLOCK_T rows of 2E
columns); `_route_sum_kernel` adds them up in a fixed order and writes the int32 counts. The library launches one
program per 128 columns walking the rows 32 at a time: 11 µs a call at `small` in the kernel table
(`results/e2e_kernels-small-compile-graph-overlap-v16-2026-11-29.txt`), about what the ATen sum and cast it replaced
took. More programs (narrower column blocks) should bring it to the launch floor. Measured
(`results/route_sum-2026-11-29.json`, µs, small / Qwen3): 32 × 128 7.07 / 7.31, 32 × 32 2.53 / 2.59, 16 × 16 2.19 /
2.21, torch 6.35 / 6.60 — the library now takes 16 × 16 (the first row below; 32 × 128 was its tile before).
Rows: the library's tile, the candidates, and torch's `part.sum(0)` + int32 cast; each candidate must give the
library's counts exactly and its probability sums to fp32 rounding (BN changes the order of the additions; each
tile's order stays fixed, so a run repeats its bits).

    PYTHONPATH=$PWD python3 benchmarks/route_sum.py                 # GPU; $OUT/route_sum.json
    TRITON_INTERPRET=1 python3 benchmarks/route_sum.py --cpu-smoke   # CPU: the candidates against the library tile
"""
import os, sys, json, datetime, statistics
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch, triton
import pithtrain.router as R
from qk_norm_rope import graph_us   # n calls captured in one CUDA graph, replays timed by events

def launch(part, E, BN, BC):
    "tot (C,) fp32 and cnt (E,) int32 from `part` (n, C) with (BN rows, BC columns) a program."
    C = part.shape[1]
    tot, cnt = torch.empty(C, device=part.device), torch.empty(E, dtype=torch.int32, device=part.device)
    R._route_sum_kernel[(triton.cdiv(C, BC),)](part, tot, cnt, part.shape[0], C, E, BN=BN, BC=BC)
    return tot, cnt

if __name__ == '__main__':
    smoke = '--cpu-smoke' in sys.argv
    dev = 'cpu' if smoke else 'cuda'
    SHAPES = {'tiny': (64 * 300, 24)} if smoke else {'small': (16384, 64), 'qwen3-30b-a3b-6l': (16384, 128)}   # (tokens, experts)
    TILES = ((16, 16), (32, 128), (32, 32), (64, 32), (64, 64), (128, 32))   # (BN, BC); the first is the library's
    res = {'date': str(datetime.date.today()), 'device': 'cpu' if smoke else torch.cuda.get_device_name(),
           'command': 'python3 benchmarks/route_sum.py', 'rows': []}
    for name, (T, E) in SHAPES.items():
        n = triton.cdiv(T, R._tile(E)[0])
        g = torch.Generator(device=dev).manual_seed(0)
        part = torch.cat([torch.randint(0, 9, (n, E), device=dev, generator=g).float(), torch.rand(n, E, device=dev, generator=g)], 1)
        ref = launch(part, E, *TILES[0])
        assert torch.equal(ref[1], part[:, :E].sum(0).to(torch.int32)) and torch.allclose(ref[0], part.sum(0), rtol=1e-5)
        for t in TILES[1:]:
            out = launch(part, E, *t)
            assert torch.allclose(out[0], ref[0], rtol=1e-6) and torch.equal(out[1], ref[1]), t
        print(f'{name}: {n} rows of {2 * E}; every tile agrees with the library', flush=True)
        if smoke: continue
        runs = {f'BN {bn} BC {bc}': (lambda bn=bn, bc=bc: launch(part, E, bn, bc)) for bn, bc in TILES}
        runs['torch sum + cast'] = lambda: (lambda s: (s, s[:E].to(torch.int32)))(part.sum(0))
        ts = {k: [] for k in runs}
        for _ in range(3):
            for k, fn in runs.items(): ts[k].append(graph_us(fn))
        for k, t in ts.items():
            row = dict(preset=name, variant=k, us_median=round(statistics.median(t), 2), us=[round(x, 2) for x in t])
            res['rows'].append(row); print(row, flush=True)
    if os.environ.get('OUT') and not smoke: json.dump(res, open(os.path.join(os.environ['OUT'], 'route_sum.json'), 'w'), indent=1)
