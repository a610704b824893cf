"GPU checks of the router: bf16 tokens on CUDA give the fp32 CPU result, and forward+backward never syncs the host."
import pytest, torch
from pithtrain.router import Router, RouterConfig

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
    assert og.weights.dtype == torch.float32 and og.probs.dtype == torch.float32 and og.counts.dtype == torch.int32
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
