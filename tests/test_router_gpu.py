"""GPU checks of the router: bf16 tokens on CUDA give the fp32 CPU result, the fused Triton path matches the torch
path on the same GPU (Qwen3-30B-A3B shapes included), and forward+backward never syncs the host.

    python3 -m pytest -v tests/test_router_gpu.py
"""
import pytest, torch
from pithtrain.router import Router, RouterConfig, fused_route, fused_ok, route_scores, select_experts, gate_weights, expert_counts

E, K = 64, 6
CONFIGS = {
    'qwen3': RouterConfig(n_experts=E, top_k=K, norm_topk_prob=True, aux_loss_coef=1e-2),
    'all_losses': RouterConfig(n_experts=E, top_k=K, aux_loss_coef=1e-2, global_aux_loss_coef=1e-2, seq_aux_loss_coef=1e-3, z_loss_coef=1e-3),
    'deepseek_v2': RouterConfig(n_experts=E, top_k=K, n_group=8, topk_group=3, routed_scaling_factor=2.5, seq_aux_loss_coef=1e-3),
    'deepseek_v3': RouterConfig(n_experts=E, top_k=K, score='sigmoid', n_group=8, topk_group=4, group_score='top2', norm_topk_prob=True,
                                routed_scaling_factor=2.5, aux_free=True, seq_aux_loss_coef=1e-4),
    'gpt_oss': RouterConfig(n_experts=E, top_k=K, score='softmax_topk', bias=True, aux_loss_coef=1e-2),
    'capacity': RouterConfig(n_experts=E, top_k=K, norm_topk_prob=True, aux_loss_coef=1e-2, capacity_factor=1.0),
}

@pytest.fixture(autouse=True)
def _ieee_fp32():
    "fp32 matmuls in full precision (not TF32), as the router assumes by default; restored afterwards."
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision('highest')
    yield
    torch.set_float32_matmul_precision(old)

def _rel(a, b): return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()

def _pair(cfg, H, seed):
    "The same router on CPU (fp32) and on CUDA, with a random e_bias when it has one."
    torch.manual_seed(seed)
    cpu = Router(H, cfg)
    with torch.no_grad():
        if cpu.bias is not None: cpu.bias.normal_(0, 0.1)
        if cpu.e_bias is not None: cpu.e_bias.normal_(0, 0.01)
    gpu = Router(H, cfg).cuda()
    gpu.load_state_dict(cpu.state_dict())
    return cpu, gpu

def _step(r, x, g, seq_len):
    o = r(x, seq_len=seq_len)
    ((o.weights * g).sum() + o.aux_loss).backward()
    return o

@pytest.mark.gpu
@pytest.mark.parametrize('name', list(CONFIGS))
def test_router_bf16_cuda_matches_fp32_cpu(name):
    cfg, T, H, S = CONFIGS[name], 4096, 1024, 512
    cpu, gpu = _pair(cfg, H, 0)
    xb = torch.randn(T, H).bfloat16()
    g = torch.randn(T, K)
    xc = xb.float().requires_grad_()                 # the same (bf16-rounded) values, fp32 on CPU
    xg = xb.cuda().requires_grad_()
    oc, og = _step(cpu, xc, g, S), _step(gpu, xg, g.cuda(), S)
    assert og.weights.dtype == torch.float32 and og.counts.dtype == torch.int32
    assert (og.probs is None) == fused_ok(cfg) and oc.probs.dtype == torch.float32   # the fused path returns no probs
    assert _rel(gpu.logits(xg).float().cpu(), cpu.logits(xc)) < 1e-5
    ic, ig = oc.ids.sort(-1), og.ids.cpu().sort(-1)
    same = (ic.values == ig.values).all(-1)
    assert same.float().mean() > 0.998, f'{(~same).sum()} of {T} tokens chose other experts'  # only near-ties may flip
    wc, wg = oc.weights.gather(1, ic.indices), og.weights.cpu().gather(1, ig.indices)
    if cfg.capacity_factor is not None:   # a flipped near-tie moves the capacity cut for every later token of that expert
        kc, kg = oc.keep.gather(1, ic.indices), og.keep.cpu().gather(1, ig.indices)
        agree = same & (kc == kg).all(-1)
        assert agree.float().mean() > 0.98, f'{(~agree).sum()} of {T} tokens differ in choice or drops'
    else: agree = same
    assert _rel(wg[agree], wc[agree]) < 1e-5
    assert (og.counts.cpu() - oc.counts).abs().sum() <= 2 * K * (~same).sum()
    assert abs(og.aux_loss.item() - oc.aux_loss.item()) <= 1e-4 * abs(oc.aux_loss.item()) + 1e-7
    for k in oc.losses: assert abs(og.losses[k].item() - oc.losses[k].item()) <= 1e-3 * abs(oc.losses[k].item()) + 1e-6, k
    if cfg.capacity_factor is not None and same.all(): assert torch.equal(og.keep.cpu(), oc.keep)
    tol = 1e-4 if same.all() else 2e-2
    assert _rel(gpu.weight.grad.cpu(), cpu.weight.grad) < tol
    assert xg.grad.dtype == torch.bfloat16 and _rel(xg.grad.float().cpu(), xc.grad) < 2e-2
    gpu.update_bias(); cpu.update_bias()
    if cpu.e_bias is not None and same.all(): assert torch.equal(gpu.e_bias.cpu(), cpu.e_bias)

@pytest.mark.gpu
@pytest.mark.parametrize('name', list(CONFIGS))
def test_router_no_host_sync(name):
    cfg, T, H, S = CONFIGS[name], 2048, 512, 256
    _, r = _pair(cfg, H, 1)
    x = torch.randn(T, H, device='cuda', dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(T, K, device='cuda')
    _step(r, x, g, S); torch.cuda.synchronize()      # warm-up: lazy inits (cuBLAS handles...) happen outside the check
    torch.cuda.set_sync_debug_mode('error')
    try:
        for _ in range(2):
            _step(r, x, g, S)
            r.update_bias(); r.reset_global_counts()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()


# ---- the fused path against the torch path, on the same GPU ----

FUSED = {   # every scoring, with and without renormalisation, scaling, e_bias and the balance losses
    'qwen3': dict(norm_topk_prob=True, aux_loss_coef=1e-3),
    'olmoe_z': dict(aux_loss_coef=1e-2, z_loss_coef=1e-3),
    'sigmoid_v3': dict(score='sigmoid', norm_topk_prob=True, routed_scaling_factor=2.5, aux_free=True, global_aux_loss_coef=1e-3),
    'sigmoid_plain': dict(score='sigmoid', aux_loss_coef=1e-2),
    'softmax_bias': dict(aux_free=True, routed_scaling_factor=2.0),
    'gpt_oss': dict(score='softmax_topk', bias=True, aux_loss_coef=1e-2),
    'capacity': dict(norm_topk_prob=True, aux_loss_coef=1e-2, capacity_factor=1.0),
}
SHAPES = {'qwen3_30b': (8192, 2048, 128, 8), 'odd': (1000, 512, 60, 4)}   # (T, H, E, k); E=64, k=6 is covered above

def _choice(logits, r):
    "The choice scores the torch path ranks: scores (+ e_bias)."
    s = route_scores(logits, r.cfg.score)[0]
    return s if r.e_bias is None else s + r.e_bias

def _same_up_to_ties(ia, ib, choice, max_frac=1e-3):
    "Per token, same chosen set; where not, the chosen choice scores are equal to rounding (a near-tie flipped). -> agree mask."
    same = (ia.sort(-1).values == ib.sort(-1).values).all(-1)
    assert (~same).float().mean().item() <= max_frac, f'{(~same).sum().item()} of {len(same)} tokens chose other experts'
    if not same.all():
        ca = choice[~same].gather(1, ia[~same]).sort(-1, descending=True).values
        cb = choice[~same].gather(1, ib[~same]).sort(-1, descending=True).values
        assert ((ca - cb).abs() <= 1e-5 * (1 + cb.abs())).all(), 'a token chose differently without a near-tie'
    return same

@pytest.mark.gpu
@pytest.mark.parametrize('shape', list(SHAPES))
@pytest.mark.parametrize('name', list(FUSED))
def test_router_fused_matches_torch_cuda(name, shape):
    T, H, E, K = SHAPES[shape]
    cfg = RouterConfig(n_experts=E, top_k=K, **FUSED[name])
    assert fused_ok(cfg)
    torch.manual_seed(0)
    rt = Router(H, cfg.replace(fused=False)).cuda()
    with torch.no_grad():
        if rt.bias is not None: rt.bias.normal_(0, 0.1)
        if rt.e_bias is not None: rt.e_bias.normal_(0, 0.01)
    rf = Router(H, cfg).cuda(); rf.load_state_dict(rt.state_dict())
    x0 = torch.randn(T, H, device='cuda').bfloat16()
    g = torch.randn(T, K, device='cuda')
    xt, xf = x0.clone().requires_grad_(), x0.clone().requires_grad_()
    ot, of = _step(rt, xt, g, None), _step(rf, xf, g, None)
    assert of.probs is None and ot.probs is not None
    assert of.ids.dtype == torch.int64 and of.weights.dtype == torch.float32 and of.counts.dtype == torch.int32
    logits = rt.logits(x0)
    same = _same_up_to_ties(of.ids, ot.ids, _choice(logits, rt))
    it, if_ = ot.ids.sort(-1), of.ids.sort(-1)
    wt, wf = ot.weights.gather(1, it.indices), of.weights.gather(1, if_.indices)
    agree = same
    if cfg.capacity_factor is not None:   # a flipped near-tie moves the capacity cut of that expert
        agree = same & (ot.keep.gather(1, it.indices) == of.keep.gather(1, if_.indices)).all(-1)
        assert agree.float().mean() > 0.98
    assert _rel(wf[agree], wt[agree]) < 1e-5
    assert (of.counts - ot.counts).abs().sum().item() <= 2 * K * (~same).sum().item()
    for k in ot.losses: assert abs(of.losses[k].item() - ot.losses[k].item()) <= 1e-4 * abs(ot.losses[k].item()) + 1e-7, k
    assert abs(of.aux_loss.item() - ot.aux_loss.item()) <= 1e-4 * abs(ot.aux_loss.item()) + 1e-7
    if same.all():
        assert torch.equal(of.ids, ot.ids)
        assert _rel(rf.weight.grad, rt.weight.grad) < 1e-4
        if rt.bias is not None: assert _rel(rf.bias.grad, rt.bias.grad) < 1e-4
        assert xf.grad.dtype == torch.bfloat16 and _rel(xf.grad, xt.grad) < 2e-3
    else:                                  # flipped tokens change their own gradient rows only
        assert _rel(xf.grad[same], xt.grad[same]) < 2e-3 and _rel(rf.weight.grad, rt.weight.grad) < 2e-2
    for b in ('bias_counts', 'global_counts'):
        if getattr(rt, b) is not None and same.all(): assert torch.equal(getattr(rf, b), getattr(rt, b))

SCORES = ('softmax', 'sigmoid', 'softmax_topk')
ROUTE_CASES = ([(s, n, a, b, 8192, 128, 8) for s in SCORES for n, a, b in ((False, 1.0, False), (True, 1.0, False), (False, 2.5, True), (True, 2.5, True))]
               + [(s, True, 2.5, True, 777, 60, 6) for s in SCORES]         # E not a power of 2, T not a multiple of the block
               + [(s, False, 1.0, False, 300, 8, 8) for s in SCORES]        # k = E
               + [('softmax', False, 1.0, False, 64, 128, 1)])              # k = 1

@pytest.mark.gpu
@pytest.mark.parametrize('score,norm,scale,bias,T,E,K', ROUTE_CASES)
def test_fused_route_same_ids(score, norm, scale, bias, T, E, K):
    "fused_route against the torch pieces on the kernel's own ids: weights, counts, psum and the logits' gradient, tight."
    torch.manual_seed(1)
    cfg = RouterConfig(n_experts=E, top_k=K, score=score, norm_topk_prob=norm, routed_scaling_factor=scale, aux_free=bias)
    l0 = torch.randn(T, E, device='cuda')
    eb = 0.05 * torch.randn(E, device='cuda') if bias else None
    lf, lr = l0.clone().requires_grad_(), l0.clone().requires_grad_()
    ids, w, counts, cf, psum = fused_route(lf, eb, cfg, True)
    s, p = route_scores(lr, score)
    ref = select_experts(s.detach() + eb if bias else s, K)
    _same_up_to_ties(ids, ref, (s.detach() + eb) if bias else s.detach())
    assert torch.equal(counts, expert_counts(ids, E)) and torch.equal(cf, counts.float())
    wr = gate_weights(s, ids, cfg, lr)   # the torch weights on the fused ids
    assert _rel(w, wr) < 1e-5 and _rel(psum, p.sum(0)) < 1e-5
    gw, gp = torch.randn(T, K, device='cuda'), torch.randn(E, device='cuda')
    ((w * gw).sum() + psum @ gp).backward(); ((wr * gw).sum() + p.sum(0) @ gp).backward()
    assert _rel(lf.grad, lr.grad) < 1e-4

@pytest.mark.gpu
def test_fused_route_deterministic():
    "No atomics: two runs give bit-identical outputs and gradients."
    torch.manual_seed(2)
    cfg = RouterConfig(n_experts=128, top_k=8, norm_topk_prob=True, aux_loss_coef=1e-3)
    l0, gw, gp = torch.randn(8192, 128, device='cuda'), torch.randn(8192, 8, device='cuda'), torch.randn(128, device='cuda')
    runs = []
    for _ in range(2):
        l = l0.clone().requires_grad_()
        ids, w, counts, cf, psum = fused_route(l, None, cfg, True)
        ((w * gw).sum() + psum @ gp).backward()
        runs.append((ids, w, counts, psum, l.grad))
    for a, b in zip(*runs): assert torch.equal(a, b)
