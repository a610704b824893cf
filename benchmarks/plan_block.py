"""Routing plan (`dispatch.make_plan_triton`: histogram + place, a two-launch counting sort) at the end-to-end shapes
(16384 tokens, k 8; 64 and 128 experts) for pair blocks of 128 … 1024 per program (`dispatch._PLAN_BLOCK`), each
plan checked equal to the torch reference. The e2e kernel tables show `_place_kernel` at ≈ 39 µs per layer with
1024-pair blocks: 128 programs on 132 SMs, each walking its block in 8 serial chunks.

    PYTHONPATH=$PWD python3 benchmarks/plan_block.py    # GPU; prints µs per plan (results/plan_block-DATE.txt)
"""
import torch, sys, os
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from triton.testing import do_bench
import pithtrain.dispatch as D

torch.manual_seed(0)
for E in (64, 128):
    T, k = 16384, 8
    ids = torch.stack([torch.randperm(E, device='cuda')[:k] for _ in range(T)])
    ref = D.make_plan_torch(ids, E)
    row = {}
    for blk in (128, 256, 512, 1024):
        D._PLAN_BLOCK = blk
        p = D.make_plan_triton(ids, E)
        assert all(torch.equal(a, b) for a, b in ((p.order, ref.order), (p.token_idx, ref.token_idx), (p.inv, ref.inv), (p.offsets.long(), ref.offsets.long()))), blk
        row[blk] = round(do_bench(lambda: D.make_plan_triton(ids, E), warmup=10, rep=100, return_mode='median') * 1e3, 1)
    print(f'plan T{T} k{k} E{E}: µs per plan by block', row, flush=True)
