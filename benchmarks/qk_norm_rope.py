"""`layers.qk_norm_rope`'s kernels at the end-to-end shapes, timed inside CUDA graphs (20 calls a replay: a call alone
is ≈ 60 µs of host work, longer than its kernels — the first version of this script timed eager calls and measured
the host: every tile of the `small` shape came out at 58–64 µs forward, 124–130 backward, 1.2–1.7 TB/s).

Rows: the forward by tile (tokens a program, warps), and three backwards:
- `lib`: the library's (one program a (token block, head), a slot a program, torch's fixed-order sums of the slots
  for the two norm weights' gradients — 16 of ATen's reductions a `small` step at ≈ 14 µs each in the kernel table
  `results/e2e_kernels-small-compile-graph-overlap-v15-2026-11-29.txt`);
- `persist NP`: prepared for the next change, not in the library: NP programs a head, each walking the token blocks
  pid, pid + NP, … and keeping its Σ dn·x̂ in registers, so there are NP slots a head instead of T / BT; the slots
  summed by torch (`+torch`) or by one Triton launch of two programs (`+sum`). A two-program sum over the library's
  T / BT slots ran 74 µs a call (`results/e2e_kernels-…-dwkernel-2026-11-29.txt`): it only pays with few slots.
Each backward's dy must equal the library's bit for bit (the same per-row arithmetic), the weight gradients to fp32
rounding. GB/s = bytes the pass must move (forward: read y, write q, k, v; backward: read dq, dk, dv and y, write dy).

    PYTHONPATH=$PWD python3 benchmarks/qk_norm_rope.py                 # GPU; $OUT/qk_norm_rope.json
    TRITON_INTERPRET=1 python3 benchmarks/qk_norm_rope.py --cpu-smoke   # CPU: the variants against the library
"""
import os, sys, json, datetime, statistics
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch, triton, triton.language as tl
import pithtrain.layers as L

@triton.jit
def _bwd_persist(y, wq, wk, cos, sin, dq, dk, dv, dy, ws, T, S, sy, HQ, HK, eps, NP, D:tl.constexpr, BT:tl.constexpr):
    "As `layers._qknr_bwd_kernel`, program (p, head) over token blocks p, p + NP, …; ws[p, head] = its Σ dn·x̂."
    p, h = tl.program_id(0), tl.program_id(1)
    acc_a, acc_b = tl.zeros((D // 2,), tl.float32), tl.zeros((D // 2,), tl.float32)
    for b in range(p, tl.cdiv(T, BT), NP):
        sa, sb = L._qknr_bwd_block(y, wq, wk, cos, sin, dq, dk, dv, dy, tl.arange(0, BT).to(tl.int64) + b * BT, h,
                                   T, S, sy, HQ, HK, eps, D)
        acc_a += sa; acc_b += sb
    if h < HQ + HK:
        slot = ws + (p * (HQ + HK) + h) * D + tl.arange(0, D // 2)
        tl.store(slot, acc_a); tl.store(slot + D // 2, acc_b)

@triton.jit
def _slot_sum(ws, dwq, dwk, R, HQ, HK, D:tl.constexpr, BR:tl.constexpr):
    "Program 0: dwq = Σ of ws's q slots (ws: (R, HQ + HK, D)); program 1: dwk; rows in a fixed order."
    p = tl.program_id(0)
    j = tl.arange(0, D)
    lo, n = tl.where(p == 0, 0, HQ), tl.where(p == 0, HQ, HK)
    acc = tl.zeros((BR, D), tl.float32)
    for i0 in range(0, R * n, BR):
        i = i0 + tl.arange(0, BR)
        acc += tl.load(ws + ((i // n) * (HQ + HK) + lo + i % n)[:, None] * D + j[None, :], mask=(i < R * n)[:, None], other=0.0)
    if p == 0: tl.store(dwq + j, tl.sum(acc, 0))
    else: tl.store(dwk + j, tl.sum(acc, 0))

def bwd_persist(dq, dk, dv, y, wq, wk, cos, sin, S, eps, NP, tsum, BT=None, nw=None):
    "The prepared backward: (dy, dwq, dwk); `tsum`: the slots summed by `_slot_sum` (else torch)."
    T, HQ, D = dq.shape; HK = dk.shape[1]
    bt, w = L._qknr_cfg(D); BT, nw = BT or bt, nw or w
    dy, ws = torch.empty_like(y), torch.zeros(NP, HQ + HK, D, dtype=torch.float32, device=y.device)
    _bwd_persist[(NP, HQ + 2 * HK)](y, wq, wk, cos, sin, dq, dk, dv, dy, ws, T, S, y.stride(0), HQ, HK, eps, NP, D=D, BT=BT, num_warps=nw)
    if not tsum: return dy, ws[:, :HQ].sum((0, 1)), ws[:, HQ:].sum((0, 1))
    dwq, dwk = torch.empty(D, device=y.device), torch.empty(D, device=y.device)
    _slot_sum[(2,)](ws, dwq, dwk, NP, HQ, HK, D=D, BR=max(1, 8192 // D), num_warps=8)
    return dy, dwq, dwk

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
    for name, (T, S, h, kvh, D) in SHAPES.items():
        y, wq, wk, cos, sin, dq, dk, dv = inputs(T, S, h, kvh, D, dev, torch.float32 if smoke else torch.bfloat16)
        ref = L._qknr_bwd(dq, dk, dv, y, wq, wk, cos, sin, S, 1e-6)
        runs = {('bwd', 'lib'): lambda: L._qknr_bwd(dq, dk, dv, y, wq, wk, cos, sin, S, 1e-6)}
        for NP in ((3,) if smoke else (16, 32, 64)):
            for ts in (False, True):
                out = bwd_persist(dq, dk, dv, y, wq, wk, cos, sin, S, 1e-6, NP, ts)
                assert torch.equal(out[0], ref[0]) and all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(out[1:], ref[1:])), (NP, ts)
                runs[('bwd', f'persist {NP}' + ('+sum' if ts else '+torch'))] = (lambda NP=NP, ts=ts: bwd_persist(dq, dk, dv, y, wq, wk, cos, sin, S, 1e-6, NP, ts))
        print(f'{name}: every backward equals the library', flush=True)
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
