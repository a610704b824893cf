"""Row gather x[tok] at the end-to-end shapes (16384 tokens, k 8): torch indexing vs `dispatch._gather_kernel` tiles
(BLOCK_R rows × BLOCK_H columns, warps). Picked the tile of `dispatch._gather_fwd`.

    PYTHONPATH=$PWD python3 benchmarks/gather_tiles.py    # GPU; prints µs per tile (results/gather_tiles-2026-11-29.txt)
"""
import torch, triton, sys, os
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from triton.testing import do_bench
from pithtrain.dispatch import _gather_kernel
dev='cuda'
for T,H in ((16384,1024),(16384,2048)):
    N = T*8
    x = torch.randn(T,H,device=dev,dtype=torch.bfloat16); tok = torch.randint(0,T,(N,),device=dev)
    out = torch.empty(N,H,device=dev,dtype=torch.bfloat16)
    t0 = do_bench(lambda: x[tok], warmup=5, rep=50, return_mode='median')
    res = {}
    for br, bh, nw in ((1,1024,4),(2,1024,4),(4,1024,8),(8,512,4),(4,512,4),(16,256,4),(1,2048,8),(2,2048,8)):
        if bh > H: continue
        g = lambda: _gather_kernel[(triton.cdiv(N,br), triton.cdiv(H,bh))](x, tok, tok, out, N, H, HAS_VALID=False, BLOCK_R=br, BLOCK_H=bh, num_warps=nw)
        g(); assert torch.equal(out, x[tok])
        res[(br,bh,nw)] = do_bench(g, warmup=5, rep=50, return_mode='median')
    byt = N*H*2 + T*H*2
    print(f'gather T{T} H{H}: torch {t0*1e3:.1f} us ({byt/t0/1e9:.2f} TB/s); triton', {k: round(v*1e3,1) for k,v in res.items()}, flush=True)
