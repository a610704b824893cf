"GPU checks of pithtrain.layers: bf16 attention paths (SDPA, window, sinks, MLA), the fused cross-entropy (Triton kernel, bf16 numerics, memory), the embedding gradient and the fused q/k norm + RoPE."
import pytest, torch, torch.nn as nn, torch.nn.functional as F
from pithtrain.core import rel_err
from pithtrain.layers import sdpa, attention_reference, cross_entropy, Attention, MLAttention, rope_cache, RMSNorm, apply_rope, qk_norm_rope
from pithtrain.layers import _ce_rows, _ce_rows_torch, _acc_mm, _ADDMM_F32, ce_chunk

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

# ---- fused cross-entropy ----
CE_SHAPES = [(16384, 2048, 151936), (16384, 1024, 32000)]   # (T, H, V): Qwen3-30B-A3B's head, a 32K vocabulary

def _ce_inputs(T, H, V, dtype=torch.bfloat16, seed=0):
    "Hidden states of RMS ~1, a head of std 0.02 (logits of std ~0.6-0.9), 10% ignored labels."
    g = torch.Generator(device='cuda').manual_seed(seed)
    h = torch.randn(T, H, device='cuda', generator=g).to(dtype)
    w = (torch.randn(V, H, device='cuda', generator=g) * 0.02).to(dtype)
    y = torch.randint(0, V, (T,), device='cuda', generator=g); y[::10] = -100
    return h, w, y

def _ce_fp32_ref(h, w, y):
    "F.cross_entropy on the fp32 logits of the same (bf16) inputs; loss and gradients by autograd in fp32."
    hf, wf = h.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    with torch.autocast('cuda', enabled=False):
        loss = F.cross_entropy(hf @ wf.t(), y, ignore_index=-100)
        loss.backward()
    return loss.detach(), hf.grad, wf.grad

def _ce_run(h, w, y, autocast=True, **kw):
    h, w = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    with torch.autocast('cuda', dtype=torch.bfloat16, enabled=autocast):
        loss = cross_entropy(h, w, y, **kw)
    loss.backward()
    return loss.detach(), h.grad, w.grad

@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize('V', [1000, 32000, 32768, 32769, 151936])   # the default block changes above 32768
def test_ce_kernel_matches_torch_rows(dtype, V):
    "The Triton kernel against its torch twin on the same logits: loss (fp32 math) and the in-place gradient."
    torch.manual_seed(0)
    n = 300
    lg = (torch.randn(n, V, device='cuda') * 3).to(dtype)
    y = torch.randint(0, V, (n,), device='cuda'); y[::7] = -100; y[1] = V - 1; y[2] = 0
    sc = torch.tensor(1 / 250., device='cuda')
    lt, lr = lg.clone(), lg.clone()
    ot = _ce_rows(lt, y, sc, True, torch.empty(n, device='cuda'))
    orf = _ce_rows_torch(lr, y, sc, True, torch.empty(n, device='cuda'))
    assert rel_err(ot, orf) < 1e-6
    assert rel_err(lt.float(), lr.float()) < (1e-5 if dtype == torch.float32 else 5e-3)
    assert (lt[::7] == 0).all()
    lo = lg.clone(); o0 = _ce_rows(lo, y, sc, False, torch.empty(n, device='cuda'))
    assert torch.equal(lo, lg) and rel_err(o0, orf) < 1e-6   # loss only: logits untouched

def test_acc_mm_fp32_accumulation():
    "dW += Gᵀh into an fp32 buffer from bf16 operands (cuBLAS fp32 output where torch has it)."
    torch.manual_seed(0)
    acc = torch.randn(4096, 1024, device='cuda')
    a, b = torch.randn(4096, 3000, device='cuda').bfloat16(), torch.randn(3000, 1024, device='cuda').bfloat16()
    ref = acc + a.float() @ b.float()
    out = _acc_mm(acc, a, b)
    assert out.data_ptr() == acc.data_ptr() and out.dtype == torch.float32
    fp32_out = _ADDMM_F32.get('cuda', True)
    print(f"addmm(out_dtype=float32) path: {fp32_out}, rel err {rel_err(out, ref):.2e}")
    assert rel_err(out, ref) < (1e-5 if fp32_out else 5e-3)

@pytest.mark.parametrize('T,H,V', CE_SHAPES)
def test_fused_ce_bf16_autocast_vs_fp32(T, H, V):
    "bf16 autocast at real shapes: loss, dH, dW against fp32 logits of the same bf16 inputs; peak extra memory."
    h, w, y = _ce_inputs(T, H, V)
    hg, wg = h.clone().requires_grad_(), w.clone().requires_grad_()
    with torch.autocast('cuda', dtype=torch.bfloat16): cross_entropy(hg, wg, y).backward()   # warm-up: Triton compile, cuBLAS workspace
    hg.grad = wg.grad = None
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
    with torch.autocast('cuda', dtype=torch.bfloat16): loss = cross_entropy(hg, wg, y)
    loss.backward()
    torch.cuda.synchronize(); extra = torch.cuda.max_memory_allocated() - base
    chunk = ce_chunk(T, V, 2)
    bound = chunk * V * 2 + V * H * 8 + T * H * 8 + (128 << 20)   # one bf16 logits chunk + fp32 dW (+ its bf16 casts) + dh
    print(f"T={T} H={H} V={V}: chunk {chunk}, peak extra {extra / 2**30:.2f} GiB, bound {bound / 2**30:.2f}, "
          f"full fp32 logits {T * V * 4 / 2**30:.2f} GiB")
    assert extra <= bound and extra < 0.65 * T * V * 4
    assert loss.dtype == torch.float32 and hg.grad.dtype == torch.bfloat16 and wg.grad.dtype == torch.bfloat16
    rl, rh, rw = _ce_fp32_ref(h, w, y)
    errs = abs(loss.item() - rl.item()) / rl.item(), rel_err(hg.grad, rh), rel_err(wg.grad, rw)
    print('rel errors (loss, dH, dW):', errs)
    assert errs[0] < 1e-3 and errs[1] < 2e-2 and errs[2] < 2e-2, errs

def test_fused_ce_fp32_master_weight_and_chunks():
    "fp32 hidden + fp32 master head under bf16 autocast: fp32 grads; the chunk (several, one, default) does not matter."
    T, H, V = 8192, 1024, 32000
    h, w, y = _ce_inputs(T, H, V, torch.float32)
    rl, rh, rw = _ce_fp32_ref(h.bfloat16(), w.bfloat16(), y)
    res = {}
    for chunk in (1000, 4096, T, None):
        l, gh, gw = _ce_run(h, w, y, chunk=chunk)
        assert gh.dtype == torch.float32 and gw.dtype == torch.float32
        res[chunk] = (abs(l.item() - rl.item()) / rl.item(), rel_err(gh, rh), rel_err(gw, rw))
        assert res[chunk][0] < 1e-3 and res[chunk][1] < 2e-2 and res[chunk][2] < 2e-2, res
    print(res)

def test_fused_ce_triton_equals_torch_path_fp32():
    "fp32 without autocast: the Triton and torch paths share the GEMMs, so they agree to fp32 rounding; sum reduction too."
    torch.manual_seed(0)
    T, H, V = 2048, 512, 32000
    h, w, y = _ce_inputs(T, H, V, torch.float32)
    for red in ('mean', 'sum'):
        a = _ce_run(h, w, y, autocast=False, chunk=700, reduction=red, backend='triton')
        b = _ce_run(h, w, y, autocast=False, chunk=700, reduction=red, backend='torch')
        assert all(rel_err(x, r) < 1e-5 for x, r in zip(a, b)), red

def test_fused_ce_edge_cases_cuda():
    "All labels ignored, one token, no_grad (loss only), only one input needing a gradient, a tied embedding."
    T, H, V = 512, 256, 5000
    h, w, y = _ce_inputs(T, H, V)
    l, gh, gw = _ce_run(h, w, torch.full((T,), -100, device='cuda'))
    assert l.item() == 0 and gh.abs().max().item() == 0 and gw.abs().max().item() == 0
    l1, gh1, gw1 = _ce_run(h[:1], w, y[1:2])
    r1 = _ce_fp32_ref(h[:1], w, y[1:2])
    assert abs(l1.item() - r1[0].item()) < 1e-2 and rel_err(gh1, r1[1]) < 2e-2 and rel_err(gw1, r1[2]) < 2e-2
    with torch.no_grad(), torch.autocast('cuda', dtype=torch.bfloat16):
        ln = cross_entropy(h.clone().requires_grad_(), w, y)
    assert ln.grad_fn is None and abs(ln.item() - _ce_fp32_ref(h, w, y)[0].item()) < 1e-2
    hh = h.clone().requires_grad_()
    with torch.autocast('cuda', dtype=torch.bfloat16): lh = cross_entropy(hh, w, y)
    assert lh.grad_fn.saved_tensors[1] is None
    lh.backward(); assert rel_err(hh.grad, _ce_fp32_ref(h, w, y)[1]) < 2e-2
    emb = nn.Embedding(V, H, device='cuda'); nn.init.normal_(emb.weight, std=0.02); ids = torch.randint(0, V, (T,), device='cuda')
    def tied(ce):
        emb.zero_grad()
        with torch.autocast('cuda', dtype=torch.bfloat16): ce(torch.tanh(emb(ids) * 20), emb.weight, y).backward()
        return emb.weight.grad.clone()
    g_ours = tied(cross_entropy)
    g_ref = tied(lambda a, b, c: F.cross_entropy(a.float() @ b.float().t(), c))
    assert rel_err(g_ours, g_ref) < 2e-2

def test_fused_ce_inside_torch_compile():
    "A compiled caller (norm + loss): cross_entropy runs eagerly inside it (graph break) and gives the eager gradients."
    T, H, V = 1024, 256, 8192
    h, w, y = _ce_inputs(T, H, V)
    norm = RMSNorm(H).cuda()
    def f(x): return cross_entropy(norm(x), w, y)
    def run(fn):
        x = h.clone().requires_grad_()
        with torch.autocast('cuda', dtype=torch.bfloat16): l = fn(x)
        l.backward(); return l.detach(), x.grad
    (le, ge), (lc, gc) = run(f), run(torch.compile(f))
    assert abs(le.item() - lc.item()) < 1e-4 and rel_err(gc, ge) < 1e-2

@pytest.mark.parametrize('V,H', [(32000, 1024), (151936, 2048), (1000, 40)])
def test_embedding_one_pass_gradient(V, H):
    "`Embedding` on CUDA: bf16 output under autocast, fp32 gradient equal to nn.Embedding's (skewed ids, unused rows), in a CUDA graph too (replayed on uniform and Zipfian ids)."
    from pithtrain.layers import Embedding, embedding_backward
    torch.manual_seed(0)
    ids = torch.randint(0, V, (8, 2048), device='cuda'); ids[:, ::4] = 7   # one id on a quarter of the tokens
    ours, ref = Embedding(V, H).cuda(), nn.Embedding(V, H).cuda()
    ref.weight.data.copy_(ours.weight.data)
    g = torch.randn(8, 2048, H, device='cuda', dtype=torch.bfloat16)
    with torch.autocast('cuda', dtype=torch.bfloat16):
        out = ours(ids)
        assert out.dtype == torch.bfloat16 and torch.equal(out, ref(ids).to(torch.bfloat16))
    out.backward(g); ref(ids).backward(g.float())
    assert ours.weight.grad.dtype == torch.float32 and rel_err(ours.weight.grad, ref.weight.grad) < 1e-6
    assert torch.equal(embedding_backward(ids, g, V), ours.weight.grad)   # deterministic: the same bits again
    # captured into a CUDA graph (no host sync), replayed on new ids
    x = ids.clone(); gg = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s): embedding_backward(x, g, V)
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(gg): dw = embedding_backward(x, g, V)
    for new in (torch.randint(0, V, x.shape, device='cuda'),   # uniform, then Zipfian over 300 ids: frequent ids take the chunk sums
                torch.multinomial(1 / torch.arange(1, 301, device='cuda').float(), x.numel(), replacement=True).view(x.shape)):
        x.copy_(new); gg.replay()
        want = torch.zeros(V, H, device='cuda').index_add_(0, x.reshape(-1), g.reshape(-1, H).float())
        assert rel_err(dw, want) < 1e-6

def test_embedding_and_head_note_grad_sq_norm():
    "A Qwen3 model's embedding and LM head gradients come with ‖dW‖² noted; clip_grad_norm_ uses the notes and matches torch."
    from pithtrain.core import noted_sq_norm
    from pithtrain.distributed import clip_grad_norm_
    from pithtrain.qwen3_moe import Qwen3MoE, Qwen3MoEConfig
    torch.manual_seed(0)
    c = Qwen3MoEConfig.preset('tiny')
    with torch.device('cuda'): m = Qwen3MoE(c)
    ids = torch.randint(0, c.vocab_size, (2, 64), device='cuda')
    with torch.autocast('cuda', dtype=torch.bfloat16): out = m(ids, ids)
    (3.0 * out.loss).backward()
    for w in (m.embed_tokens.weight, m.lm_head.weight):
        ref = w.grad.double().square().sum()
        assert noted_sq_norm(w) is not None and abs(noted_sq_norm(w).double() / ref - 1) < 1e-5
    ps = [p for p in m.parameters() if p.grad is not None]
    n_ref = torch.nn.utils.clip_grad_norm_(ps, float('inf'))
    assert abs(clip_grad_norm_(ps, float('inf')) / n_ref - 1) < 1e-5

# ---- q/k norm + RoPE in one pass ----
def _qknr_fp32(y, wq, wk, cos, sin, h, kvh, eps=1e-6):
    "fp32 reference: per-head RMSNorm then half-split RoPE (the unfused modules' math without the bf16 roundings)."
    B, S, _ = y.shape; D = wq.shape[0]
    q, k, v = (t.reshape(B, S, -1, D) for t in y.float().split([h * D, kvh * D, kvh * D], -1))
    rms = lambda x, w: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w
    return apply_rope(rms(q, wq), cos, sin), apply_rope(rms(k, wk), cos, sin), v

@pytest.mark.parametrize('h,kvh,D', [(16, 4, 64), (32, 4, 128), (4, 4, 64)])
def test_qk_norm_rope_bf16_matches_fp32(h, kvh, D):
    torch.manual_seed(0)
    B, S = 2, 2047
    y = torch.randn(B, S, (h + 2 * kvh) * D, device='cuda', dtype=torch.bfloat16)
    wq, wk = (1 + 0.3 * torch.randn(D, device='cuda') for _ in range(2))
    cos, sin = rope_cache(S, D, device='cuda')
    gs = [torch.randn(B, S, n, D, device='cuda', dtype=torch.bfloat16) for n in (h, kvh, kvh)]
    outs = []
    for f, yy in ((qk_norm_rope, y), (_qknr_fp32, y.float())):
        yy, a, b = (t.clone().requires_grad_() for t in (yy, wq, wk))
        o = f(yy, a, b, cos, sin, h, kvh, 1e-6)
        torch.autograd.backward(o, [g.to(o[0].dtype) for g in gs])
        outs.append([*o, yy.grad, a.grad, b.grad])
    assert outs[0][0].dtype == outs[0][3].dtype == torch.bfloat16 and outs[0][4].dtype == torch.float32
    errs = [rel_err(x.float(), r) for x, r in zip(*outs)]
    assert max(errs) < 1e-2, errs

def test_attention_fused_qk_norm_rope_compiled_in_a_graph():
    "Qwen3-style attention compiled, fused pass on and off: outputs and gradients agree; a CUDA graph replays the fused one."
    import pithtrain.layers as L
    torch.manual_seed(0)
    x = torch.randn(2, 1024, 512, device='cuda', dtype=torch.bfloat16)
    cos, sin = rope_cache(1024, 64, device='cuda')
    m0 = Attention(512, 8, 2, 64, qk_norm='head').cuda()
    with torch.no_grad(): m0.q_norm.weight.normal_(1, 0.3); m0.k_norm.weight.normal_(1, 0.3)
    res = []
    for on in (False, True):
        L.FUSED_QK_NORM_ROPE = on
        try:
            m = Attention(512, 8, 2, 64, qk_norm='head').cuda(); m.load_state_dict(m0.state_dict())
            f = torch.compile(m)
            with torch.autocast('cuda', torch.bfloat16): y = f(x, cos, sin)
            y.float().square().mean().backward()
            res.append((y.detach(), [p.grad for p in m.parameters()]))
        finally: L.FUSED_QK_NORM_ROPE = True
    assert rel_err(res[1][0].float(), res[0][0].float()) < 1e-2
    assert all(rel_err(a, b) < 2e-2 for a, b in zip(res[1][1], res[0][1]))
    m = Attention(512, 8, 2, 64, qk_norm='head').cuda(); m.load_state_dict(m0.state_dict())   # eager, captured
    xs = x.clone()
    with torch.autocast('cuda', torch.bfloat16): m(xs, cos, sin)   # warm-up (autotuning, allocations) outside the capture
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), torch.cuda.graph(g):
        with torch.autocast('cuda', torch.bfloat16): yg = m(xs, cos, sin)
    torch.cuda.current_stream().wait_stream(s)
    xs.copy_(x); g.replay(); torch.cuda.synchronize()
    with torch.autocast('cuda', torch.bfloat16): ye = m(x, cos, sin)
    assert torch.equal(yg, ye)
