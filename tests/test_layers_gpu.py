"GPU checks of pithtrain.layers: bf16 attention paths (SDPA, window, sinks, MLA) and the chunked cross-entropy's memory."
import pytest, torch, torch.nn.functional as F
from pithtrain.core import rel_err
from pithtrain.layers import sdpa, attention_reference, cross_entropy, Attention, MLAttention, rope_cache

pytestmark = pytest.mark.gpu

@pytest.mark.parametrize('window,sinks', [(None, False), (128, False), (None, True), (128, True)])
def test_sdpa_bf16_matches_reference(window, sinks):
    torch.manual_seed(0)
    B, h, kvh, S, D = 2, 16, 4, 1024, 64
    q, k, v = (torch.randn(B, n, S, D, device='cuda', dtype=torch.bfloat16) for n in (h, kvh, kvh))
    s = torch.randn(h, device='cuda') if sinks else None
    out = sdpa(q, k, v, D ** -0.5, window, s)
    ref = attention_reference(q.float(), k.float(), v.float(), D ** -0.5, window, s)
    assert out.dtype == torch.bfloat16 and rel_err(out, ref) < 2e-2

def test_attention_modules_bf16_backward():
    torch.manual_seed(0)
    x = torch.randn(2, 512, 256, device='cuda', dtype=torch.bfloat16, requires_grad=True)
    for m, rot in ((Attention(256, 8, 2, 32, bias=True, sliding_window=128, sinks=True), 32),
                   (MLAttention(256, 8, None, 64, 32, 16, 32), 16)):
        m = m.cuda().bfloat16()
        cos, sin = rope_cache(512, rot, device='cuda')
        y = m(x, cos, sin); y.float().square().mean().backward()
        assert y.shape == x.shape and torch.isfinite(x.grad).all()
        assert all(torch.isfinite(p.grad).all() for p in m.parameters())

def test_chunked_cross_entropy_memory_and_value():
    torch.manual_seed(0)
    T, H, V = 8192, 2048, 151936
    h = (torch.randn(T, H, device='cuda') * 0.5).bfloat16().requires_grad_()
    w = (torch.randn(V, H, device='cuda') * 0.02).bfloat16().requires_grad_()
    y = torch.randint(0, V, (T,), device='cuda'); y[::5] = -100
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
    loss = cross_entropy(h, w, y, chunk=2048); loss.backward()
    torch.cuda.synchronize(); extra = torch.cuda.max_memory_allocated() - base
    full_fp32_logits = T * V * 4
    assert extra < full_fp32_logits, f"peak extra {extra / 2**30:.2f} GiB vs full fp32 logits {full_fp32_logits / 2**30:.2f} GiB"
    with torch.no_grad(): ref = F.cross_entropy((h @ w.t()).float(), y)
    assert abs(loss.item() - ref.item()) / ref.item() < 1e-3
