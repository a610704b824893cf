"""`layers.qk_norm_rope`'s two kernels at the end-to-end shapes, by tile (tokens a program, warps): µs and the bytes
they must move per µs (forward: read y, write q, k, v; backward: read dq, dk, dv and y, write dy), interleaved rounds.
Prints the best tile per head_dim as `PITHTRAIN_QKNR_TILES` wants it (last line), so one device call can time the
tiles and run the end-to-end benchmark with the best.

    PYTHONPATH=$PWD python3 benchmarks/qk_norm_rope.py     # GPU; $OUT/qk_norm_rope.json
"""
import os, sys, json, datetime, statistics
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch, triton
import pithtrain.layers as L

SHAPES = {'small': (16384, 2048, 16, 4, 64), 'qwen3-30b-a3b-6l': (16384, 4096, 32, 4, 128)}   # (T, S, h, kvh, D)
TILES = ((16, 4), (32, 4), (64, 4), (128, 4), (32, 2), (64, 8), (128, 8), (256, 8))
res = {'date': str(datetime.date.today()), 'device': torch.cuda.get_device_name(), 'command': 'python3 benchmarks/qk_norm_rope.py', 'rows': []}
best = {}
for name, (T, S, h, kvh, D) in SHAPES.items():
    g = torch.Generator(device='cuda').manual_seed(0)
    y = torch.randn(T, (h + 2 * kvh) * D, device='cuda', generator=g).bfloat16()
    wq, wk = (1 + 0.3 * torch.randn(D, device='cuda', generator=g) for _ in range(2))
    cos, sin = L.rope_cache(S, D, device='cuda')
    dq, dk, dv = (torch.randn(T, n, D, device='cuda', generator=g).bfloat16() for n in (h, kvh, kvh))
    nbytes = {'fwd': 2 * y.numel() * 2, 'bwd': 3 * y.numel() * 2}
    ref = None
    runs = {}
    for bt, nw in TILES:
        if bt * D > 32768: continue
        L._QKNR_TILES[D] = (bt, nw)
        out = [*L._qknr(y, wq, wk, cos, sin, S, h, kvh, 1e-6), *L._qknr_bwd(dq, dk, dv, y, wq, wk, cos, sin, S, 1e-6)]
        if ref is None: ref = out
        assert all(torch.allclose(a.float(), b.float(), rtol=1e-2, atol=1e-2) for a, b in zip(out, ref)), (bt, nw)   # the same rows
        runs[(bt, nw)] = {'fwd': lambda: L._qknr(y, wq, wk, cos, sin, S, h, kvh, 1e-6),
                          'bwd': lambda: L._qknr_bwd(dq, dk, dv, y, wq, wk, cos, sin, S, 1e-6)}
    ts = {(c, p): [] for c in runs for p in ('fwd', 'bwd')}
    for _ in range(5):
        for c, fns in runs.items():
            for p, fn in fns.items():
                L._QKNR_TILES[D] = c
                ts[(c, p)].append(triton.testing.do_bench(fn, warmup=10, rep=40) * 1e3)
    for (c, p), t in ts.items():
        us = statistics.median(t)
        row = dict(preset=name, tile=c, part=p, us_median=round(us, 1), tb_s=round(nbytes[p] / us / 1e6, 2), us=[round(x, 1) for x in t])
        res['rows'].append(row); print(row, flush=True)
    best[D] = min(runs, key=lambda c: statistics.median(ts[(c, 'fwd')]) + statistics.median(ts[(c, 'bwd')]))
    L._QKNR_TILES.pop(D, None)
if os.environ.get('OUT'): json.dump(res, open(os.path.join(os.environ['OUT'], 'qk_norm_rope.json'), 'w'), indent=1)
print(';'.join(f'{d}:{bt},{nw}' for d, (bt, nw) in best.items()))
