"""Attention forward + backward at `small`'s shape (8 × 2048 tokens, 16 query / 4 key-value heads of 64): does the q/k/v
memory layout (BSHD, the model's, or BHSD), expanding the key-value heads instead of SDPA's GQA, or flash instead of
cuDNN change the time? Five interleaved rounds of 20 calls each, median µs.

Result (2026-11-30, H200, `results/att_layout-2026-11-30.json`): cuDNN BSHD 809, BHSD 800, BSHD expanded 812, BHSD
expanded 808; flash BSHD 1168, BHSD 1221. The layout and the expansion are within 1%: the model's BSHD + GQA stays.

    PYTHONPATH=$PWD python3 benchmarks/att_layout.py   # GPU; $OUT/att_layout.json
"""
import torch, json, os, statistics as st
from pithtrain.layers import causal_sdpa
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend as SB
B, S, H, KV, D = 8, 2048, 16, 4, 64
dev = 'cuda'; g = torch.Generator(device=dev).manual_seed(0)
def mk(shape): return torch.randn(shape, device=dev, dtype=torch.bfloat16, generator=g)
def inputs(layout, expand):
    if layout == 'bshd': q, k, v = mk((B, S, H, D)).transpose(1, 2), mk((B, S, KV, D)).transpose(1, 2), mk((B, S, KV, D)).transpose(1, 2)
    else: q, k, v = mk((B, H, S, D)), mk((B, KV, S, D)), mk((B, KV, S, D))
    if expand:
        k = k.repeat_interleave(H // KV, 1); v = v.repeat_interleave(H // KV, 1)
        if layout == 'bshd': k, v = k.transpose(1, 2).contiguous().transpose(1, 2), v.transpose(1, 2).contiguous().transpose(1, 2)
    return [t.detach().requires_grad_() for t in (q, k, v)]
do = mk((B, S, H, D)).transpose(1, 2)
def run(q, k, v, backend):
    if backend == 'cudnn': o = causal_sdpa(q, k, v, D ** -0.5)
    else:
        with sdpa_kernel([SB.FLASH_ATTENTION]): o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=D ** -0.5, enable_gqa=q.shape[1] != k.shape[1])
    o.backward(do)
def timeit(case, n=20):
    q, k, v = inputs(case[0], case[1])
    for _ in range(3): run(q, k, v, case[2])
    e0, e1 = torch.cuda.Event(True), torch.cuda.Event(True)
    torch.cuda.synchronize(); e0.record()
    for _ in range(n): run(q, k, v, case[2])
    e1.record(); torch.cuda.synchronize(); return e0.elapsed_time(e1) / n * 1e3
cases = [('bshd', False, 'cudnn'), ('bhsd', False, 'cudnn'), ('bshd', True, 'cudnn'), ('bhsd', True, 'cudnn'), ('bshd', False, 'flash'), ('bhsd', False, 'flash')]
res = {str(c): [] for c in cases}
for r in range(5):
    for c in cases:
        try: res[str(c)].append(timeit(c))
        except Exception as ex: res[str(c)].append(None); print(c, 'failed', ex)
out = {k: (st.median([x for x in v if x]) if any(v) else None) for k, v in res.items()}
for k, v in out.items(): print(f"{k:35s} fwd+bwd {v:8.1f} us" if v else f"{k} failed")
json.dump({'date': '2026-11-30', 'command': 'python3 benchmarks/att_layout.py', 'us_fwd_bwd_median_of_5': out, 'all': res}, open(os.environ.get('OUT', '.') + '/att_layout.json', 'w'), indent=1)
