"""The routing plan's place pass (each (token, expert) pair's plan row) in three forms: the kernel the library had
until 2026-11-29 ('lib' in the committed result: a (chunk, experts) one-hot tile, prefix sums and bases in int64),
int32 ranks ('i32'), and int32 with the tile transposed to (experts, chunk) so the prefix sum runs along the tile's
contiguous axis, within a warp, instead of across warps ('i32-tr', now `dispatch._place_kernel`). Each variant's (order, token, inverse) are checked equal to the library's; then timed at the e2e shapes
(16384 tokens, k 8; 64 and 128 experts), interleaved rounds.

Why: the e2e kernel tables show `_place_kernel` at ≈ 45 µs a `small` layer (0.36 ms a step) for 131072 pairs.

    PYTHONPATH=$PWD python3 benchmarks/place_scan.py                # GPU; $OUT/place_scan.json
    TRITON_INTERPRET=1 python3 benchmarks/place_scan.py --cpu-smoke  # CPU: the variants equal the library
"""
import os, sys, json, datetime, statistics
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch, triton, triton.language as tl
import pithtrain.dispatch as D

@triton.jit
def _place32(ids_ptr, hist_ptr, order_ptr, tok_ptr, inv_ptr, offs_ptr, counts_ptr, M, E, K, NB, PAD,
             BLOCK: tl.constexpr, C: tl.constexpr, EP: tl.constexpr, RB: tl.constexpr, TR: tl.constexpr,
             I64: tl.constexpr):
    "The place pass; TR: the one-hot tile as (EP, C), prefix sums along its contiguous axis; I64: counts in int64."
    b = tl.program_id(0)
    ex = tl.arange(0, EP)
    total = tl.zeros([EP], tl.int64 if I64 else tl.int32)
    before = tl.zeros([EP], tl.int64 if I64 else tl.int32)
    for r0 in range(0, NB, RB):
        r = r0 + tl.arange(0, RB)
        hrow = tl.load(hist_ptr + r.to(tl.int64)[:, None] * E + ex[None, :], mask=(r < NB)[:, None] & (ex < E)[None, :], other=0).to(total.dtype)
        total += tl.sum(hrow, axis=0)
        before += tl.sum(tl.where((r < b)[:, None], hrow, 0), axis=0)
    padded = (total + PAD - 1) // PAD * PAD
    ends = tl.cumsum(padded, 0)
    base = ends - padded + before
    if b == 0:
        tl.store(counts_ptr + ex, total.to(tl.int32), mask=ex < E)
        tl.store(offs_ptr + ex, (ends - padded).to(tl.int32), mask=ex < E)
        tl.store(offs_ptr + E, tl.sum(padded, 0).to(tl.int32))
    for c0 in range(0, BLOCK, C):
        i = b.to(tl.int64) * BLOCK + c0 + tl.arange(0, C)
        m = i < M
        e = tl.load(ids_ptr + i, mask=m, other=-1).to(tl.int32)
        if TR:
            oh = (ex[:, None] == e[None, :]).to(tl.int32)                       # (EP, C)
            rank = tl.sum(tl.where(oh != 0, tl.cumsum(oh, 1) - 1 + base[:, None], 0), axis=0)
            base += tl.sum(oh, axis=1)
        else:
            oh = (e[:, None] == ex[None, :]).to(tl.int32)                       # (C, EP)
            rank = tl.sum(tl.where(oh != 0, tl.cumsum(oh, 0).to(base.dtype) - 1 + base[None, :], 0), axis=1)
            base += tl.sum(oh, axis=0).to(base.dtype)
        rank = rank.to(tl.int64)
        tl.store(inv_ptr + i, rank, mask=m)
        tl.store(order_ptr + rank, i, mask=m)
        tl.store(tok_ptr + rank, i // K, mask=m)

def plan(ids, E, variant, C=None, warps=8):
    "hist + place by `variant` ('lib', 'i32', 'i32-tr'): the plan's (order, tok, inv, offsets, counts) and a launcher."
    T, k = ids.shape
    flat, dev = ids.reshape(-1).contiguous(), ids.device
    M, B, EP = flat.numel(), D._PLAN_BLOCK, triton.next_power_of_2(E)
    C = C or max(16, min(128, 8192 // EP))
    nb = max(triton.cdiv(M, B), 1)
    order, tok, inv = (torch.empty(M, dtype=torch.int64, device=dev) for _ in range(3))
    hist = torch.empty(nb, E, dtype=torch.int32, device=dev)
    offs, counts = torch.empty(E + 1, dtype=torch.int32, device=dev), torch.empty(E, dtype=torch.int32, device=dev)
    D._hist_kernel[(nb,)](flat, hist, M, E, BLOCK=B, C=max(16, min(128, 8192 // EP)), EP=EP)
    RB = max(1, min(64, 8192 // EP))
    go = lambda: _place32[(nb,)](flat, hist, order, tok, inv, offs, counts, M, E, k, nb, 1, BLOCK=B, C=C, EP=EP, RB=RB,
                                 TR=variant == 'i32-tr', I64=variant == 'lib', num_warps=warps)
    go()
    return (order, tok, inv, offs, counts), go

if __name__ == '__main__':
    smoke = '--cpu-smoke' in sys.argv
    dev = 'cpu' if smoke else 'cuda'
    torch.manual_seed(0)
    shapes = ((64, 8, 8), (8, 4, 6)) if smoke else ((16384, 8, 64), (16384, 8, 128))
    VARS = [('lib', None, 8), ('i32', None, 8), ('i32-tr', None, 8), ('i32-tr', 256, 8), ('i32-tr', 64, 4), ('i32-tr', 128, 4)]
    res = {'date': str(datetime.date.today()), 'device': torch.cuda.get_device_name() if not smoke else 'cpu',
           'command': 'python3 benchmarks/place_scan.py', 'rows': []}
    for T, k, E in shapes:
        ids = torch.stack([torch.randperm(E, device=dev)[:k] for _ in range(T)])
        ref = D.make_plan_torch(ids, E)
        ref = (ref.order, ref.token_idx, ref.inv, ref.offsets.int(), ref.counts.int())
        gos = {}
        for v, c, w in VARS:
            out, go = plan(ids, E, v, c, w)
            assert all(torch.equal(a, b) for a, b in zip(out, ref)), (v, c, w)
            gos[f'{v} C{c or "lib"} w{w}'] = go
        print(f'T{T} k{k} E{E}: all variants equal', flush=True)
        if smoke: continue
        ts = {n: [] for n in gos}
        for _ in range(5):
            for n, go in gos.items(): ts[n].append(triton.testing.do_bench(go, warmup=10, rep=50) * 1e3)
        for n, t in ts.items():
            row = dict(T=T, k=k, E=E, variant=n, us_median=round(statistics.median(t), 1), us=[round(x, 1) for x in t])
            res['rows'].append(row); print(row, flush=True)
    if os.environ.get('OUT') and not smoke: json.dump(res, open(os.path.join(os.environ['OUT'], 'place_scan.json'), 'w'), indent=1)
