"""fc1 and the weight gradient of w1 reading the routed rows x[tok] themselves (A by cp.async from a loading warpgroup, B
by TMA as before) against the library's default, which first writes the gathered copy (`dispatch._gather_fwd`, 268 MB
a `small` layer) and reads it by TMA. Checks both bit for bit (same tiles, same k order), then interleaved rounds at
the end-to-end shapes: gather + fc1 against fc1 reading x[tok], dW1 from the copy against dW1 reading x[tok].

The library code it needs is `benchmarks/gather_fused.patch` (`git apply benchmarks/gather_fused.patch` on the commit
that added it, then run from that tree): `experts._fc1_ws` / `_wgrad_ws` gain `tok`, the kernels a `GX` switch
(a 4-warp loading partition: `_gx_tok` loads the tile's tokens, `_gx_copy` issues 16-byte `cp.async.cg` copies into
the swizzled slot and `cp.async.mbarrier.arrive.noinc`, so a slot's barrier counts 128 + 1 arrivals; the consumers
`fence_async_shared` before their MMAs), and `PITHTRAIN_GX=1` routes `expert_ffn` through them.

Why: the gather is 0.68 ms of the graphed `small` step and its copy 268 MB a layer of activations. Hopper's TMA cannot
gather rows (one-row boxes starve the MMA: round 17), so the loading partition becomes a warpgroup issuing cp.async.

Result (2026-11-30, H200; `results/gather_fused-2026-11-30.json`, µs, medians of 5 interleaved rounds): right at once,
bit for bit at every case (experts of 0, 1, 33, 64, 65, 130, 200 rows; both e2e shapes), and slower everywhere.
`small`: gather 88.3 + fc1 430.5 = 560.0 against fc1 reading x[tok] 685.8; dW1 424.5 against 887.7. Qwen3: gather +
fc1 1542.2 against 1993.5; dW1 1488.7 against 2785.5. Per `small` layer +0.59 ms, so not taken. The first build
(`-v1-`: each k-step loaded its tokens before its copies) was slower still (dW1 1227.9 µs); the consumers' proxy fence
costs nothing measurable (`-nofence-`: 688.5 / 921.9). Most likely what limits it is how many cp.async copies an SM keeps in flight
(not measured directly): a slot's 16 KB of A arrive as 1024 copies of 16 bytes, where TMA moves the same tile as one bulk transfer.

    PYTHONPATH=$PWD python3 benchmarks/gather_fused.py --debug   # GPU, patch applied: small cases, each in its own process
    PYTHONPATH=$PWD python3 benchmarks/gather_fused.py           # GPU, patch applied: checks and rounds; $OUT/gather_fused.json
"""
import os, sys, json, datetime
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
from pithtrain import experts as X
from pithtrain.dispatch import _gather_fwd

def operands(T, k, E, H, I, rows=None):
    "x (T, H), tok, offs, w1 (E, H, 2I), dgu (N, 2I), all bf16 but the indices; rows: the experts' row counts (tiny cases)."
    from experts_sweep import routing
    bf = torch.bfloat16
    if rows is None: plan, offs = routing(T, k, E); tok = plan.token_idx
    else:
        torch.manual_seed(0)
        offs = torch.tensor([0] + rows, device='cuda').cumsum(0).to(torch.int32)
        tok = torch.randint(0, T, (int(offs[-1]),), device='cuda')
    N = tok.numel()
    x = torch.randn(T, H, device='cuda', dtype=bf)
    return x, tok, offs, torch.randn(E, H, 2 * I, device='cuda', dtype=bf) * 0.02, torch.randn(N, 2 * I, device='cuda', dtype=bf)

def fc1(x, tok, offs, w1, gx, table):
    N, I = tok.numel(), w1.shape[2] // 2
    h = torch.full((N, I), float('nan'), device='cuda', dtype=x.dtype); gu = torch.full((N, 2 * I), float('nan'), device='cuda', dtype=x.dtype)
    if gx: X._fc1_ws(x, offs, w1, h, gu, None, table, tok)
    else: X._fc1_ws(_gather_fwd(x, tok, None), offs, w1, h, gu, None, table)
    return h, gu

def dw1(x, tok, offs, dgu, gx, order):
    E, H, I2 = offs.numel() - 1, x.shape[1], dgu.shape[1]
    dw = torch.full((E, H, I2), float('nan'), device='cuda'); sq = X._sq_slots(dw)
    if gx: X._wgrad_ws(x, dgu, offs, dw, sq, order, tok=tok)
    else: X._wgrad_ws(_gather_fwd(x, tok, None), dgu, offs, dw, sq, order)
    return dw, sq

def check(name, x, tok, offs, w1, dgu):
    "Both paths' outputs compared bit for bit; (result row, the plan's tile table, its expert order)."
    table, order = X._tile_table(offs, tok.numel(), X._WS_CFG[0]), X.expert_order(offs)
    (h0, g0), (h1, g1) = fc1(x, tok, offs, w1, False, table), fc1(x, tok, offs, w1, True, table)
    (d0, s0), (d1, s1) = dw1(x, tok, offs, dgu, False, order), dw1(x, tok, offs, dgu, True, order)
    torch.cuda.synchronize()
    r = dict(case=name, fc1_equal=bool(torch.equal(h0, h1) and torch.equal(g0, g1)), dw1_equal=bool(torch.equal(d0, d1)),
             sq_equal=bool(torch.equal(s0, s1)), nan=int(h1.isnan().sum() + d1.isnan().sum()))
    print(r, flush=True)
    return r, table, order

TINY = {'tiny': (300, 256, 64, [0, 1, 200, 130, 33, 64, 65]), 'tiny-empty-last': (50, 128, 64, [5, 0, 1, 0])}   # T, H, I, rows

def case(name):
    T, H, I, rows = TINY[name]
    return check(name, *operands(T, None, len(rows), H, I, rows))[0]

def main(rounds=5):
    from experts_sweep import SHAPES, interleaved_rows
    res = dict(date=datetime.date.today().isoformat(), device=torch.cuda.get_device_name(),
               command='python3 benchmarks/gather_fused.py ' + ' '.join(sys.argv[1:]), rows=[])
    out = os.environ.get('OUT')
    for name in TINY: res['rows'].append(case(name))
    for sname, (T, k, E, H, I) in SHAPES.items():
        x, tok, offs, w1, dgu = operands(T, k, E, H, I)
        r, table, order = check(sname, x, tok, offs, w1, dgu)
        res['rows'].append(r)
        N = tok.numel()
        h, gu = torch.empty(N, I, device='cuda', dtype=x.dtype), torch.empty(N, 2 * I, device='cuda', dtype=x.dtype)
        dw = torch.empty(E, H, 2 * I, device='cuda'); sq = X._sq_slots(dw)
        xg = _gather_fwd(x, tok, None)
        fns = {'gather': lambda: _gather_fwd(x, tok, None),
               'fc1 (copy)': lambda: X._fc1_ws(xg, offs, w1, h, gu, None, table),
               'gather + fc1': lambda: X._fc1_ws(_gather_fwd(x, tok, None), offs, w1, h, gu, None, table),
               'fc1 x[tok]': lambda: X._fc1_ws(x, offs, w1, h, gu, None, table, tok),
               'dW1 (copy)': lambda: X._wgrad_ws(xg, dgu, offs, dw, sq, order),
               'dW1 x[tok]': lambda: X._wgrad_ws(x, dgu, offs, dw, sq, order, tok=tok)}
        res['rows'] += interleaved_rows(fns, rounds, rep=30, shape=sname)
        if out: json.dump(res, open(os.path.join(out, 'gather_fused.json'), 'w'), indent=1)

if __name__ == '__main__':
    if '--case' in sys.argv: case(sys.argv[sys.argv.index('--case') + 1])
    elif '--debug' in sys.argv:
        from experts_sweep import isolated_cases
        isolated_cases(__file__, tuple(TINY), timeout=60, tail=1500, tail_err=1500)
    else: main()
