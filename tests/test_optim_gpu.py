"GPU checks of pithtrain.optim.AdamW: its Triton step against torch's fused AdamW, bf16 compute copies, and a model trained with them."
import pytest, torch
from pithtrain.core import rel_err, keep_compute_copy, compute_weight
from pithtrain.optim import AdamW, build_optimizer

pytestmark = pytest.mark.gpu

SHAPES = [(1000003,), (7,), (8, 2048, 1536), (151936 // 8, 2048), (1,)]   # awkward sizes, a stacked expert weight, a head

def _params(seed=0):
    g = torch.Generator(device='cuda').manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, device='cuda', generator=g) * 0.02) for s in SHAPES]

@pytest.mark.parametrize('clip', [False, True])
def test_adamw_matches_torch_fused(clip):
    a, b = _params(), _params()
    for p in b: keep_compute_copy(p)
    kw = dict(lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    ref = torch.optim.AdamW(a, fused=True, **kw); ours = AdamW(b, **kw)
    g = torch.Generator(device='cuda').manual_seed(1)
    for i in range(4):
        for pa, pb in zip(a, b):
            gr = torch.randn(pa.shape, device='cuda', generator=g) * 3; pa.grad, pb.grad = gr.clone(), gr.clone()
        if clip:   # the clip factor handed over as a device scalar, as `distributed.clipped_step` does
            s = torch.tensor(2.5 + i, device='cuda'); ref.grad_scale = ours.grad_scale = s
        ref.step(); ours.step()
    for pa, pb in zip(a, b):
        assert rel_err(pb, pa) < 1e-6, (pa.shape, rel_err(pb, pa))
        for k in ('exp_avg', 'exp_avg_sq'): assert rel_err(ours.state[pb][k], ref.state[pa][k]) < 1e-6
        with torch.no_grad():
            assert torch.equal(pb.compute_copy, pb.bfloat16())            # the copy is the new weight, rounded to nearest
            assert compute_weight(pb, torch.bfloat16) is pb.compute_copy

def test_adamw_grads_untouched_and_no_sync():
    p = torch.nn.Parameter(torch.randn(4096, device='cuda')); p.grad = torch.randn(4096, device='cuda'); g0 = p.grad.clone()
    o = AdamW([p]); o.grad_scale = torch.tensor(3.0, device='cuda')
    o.step()                                                   # lazily creates state
    torch.cuda.set_sync_debug_mode('error')
    try: o.step()
    finally: torch.cuda.set_sync_debug_mode('default')
    assert torch.equal(p.grad, g0)                             # the gradient is read, divided in registers, never written

def test_model_trains_with_copies():
    "A tiny Qwen3-MoE under bf16 autocast: our AdamW (copies read by experts and CE) tracks torch's fused AdamW."
    from pithtrain.qwen3_moe import Qwen3MoE, Qwen3MoEConfig
    torch.manual_seed(0)
    c = Qwen3MoEConfig.preset('tiny')
    ma = Qwen3MoE(c).cuda(); mb = Qwen3MoE(c).cuda(); mb.load_state_dict(ma.state_dict())
    oa = torch.optim.AdamW(ma.parameters(), lr=1e-3, fused=True); ob = build_optimizer(mb, 'adamw', lr=1e-3, weight_decay=0.0)
    assert type(ob) is AdamW
    ids = torch.randint(0, c.vocab_size, (2, 64), device='cuda')
    la, lb = [], []
    for _ in range(5):
        for m, o, l in ((ma, oa, la), (mb, ob, lb)):
            with torch.autocast('cuda', dtype=torch.bfloat16): out = m(ids, ids.roll(-1, 1))
            out.loss.backward(); o.step(); o.zero_grad(set_to_none=True); l.append(out.loss.item())
    w1 = mb.layers[0].mlp.w1
    assert w1.compute_copy is not None and mb.head_weight().compute_copy is not None
    with torch.no_grad(): assert compute_weight(w1, torch.bfloat16) is w1.compute_copy
    assert lb[-1] < lb[0] and max(abs(x - y) for x, y in zip(la, lb)) < 2e-2, (la, lb)

def test_adamw_bf16_state_unbiased_and_tracks_fp32():
    "bf16 moments, stochastically rounded: unbiased on a constant, the updates within bf16 precision of torch's fp32 AdamW."
    w = torch.nn.Parameter(torch.zeros(1 << 20, device='cuda')); w.grad = torch.full_like(w, 1 + 2 ** -10)
    o = AdamW([w], lr=0.0, betas=(0.0, 0.95), weight_decay=0.0, state_dtype=torch.bfloat16)
    o.step(); m = o.state[w]['exp_avg'].float()
    assert o.state[w]['exp_avg'].dtype == torch.bfloat16
    assert abs((m > 1).float().mean().item() - 1 / 8) < 2e-3 and abs(m.mean().item() - (1 + 2 ** -10)) < 2e-5
    a, b = _params(), _params()
    w0 = [p.detach().clone() for p in b]
    kw = dict(lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    ref = torch.optim.AdamW(a, fused=True, **kw); ours = AdamW(b, state_dtype=torch.bfloat16, **kw)
    g = torch.Generator(device='cuda').manual_seed(1)
    for i in range(4):
        for pa, pb in zip(a, b):
            gr = torch.randn(pa.shape, device='cuda', generator=g) * 3; pa.grad, pb.grad = gr.clone(), gr.clone()
        ref.step(); ours.step()
    for pa, pb, p0 in zip(a, b, w0):
        assert rel_err(pb - p0, pa - p0) < 1e-2, (pa.shape, rel_err(pb - p0, pa - p0))
        tol = 1e-2 if pb.numel() > 100 else 3e-2   # one element: each step's rounding error is up to an ulp (0.8%)
        for k in ('exp_avg', 'exp_avg_sq'): assert rel_err(ours.state[pb][k].float(), ref.state[pa][k]) < tol, (pa.shape, k)

@pytest.mark.parametrize('state_dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('staged', [False, True])
def test_adamw_small_parameters_batched_bit_for_bit(state_dtype, staged):
    "`batch_below`: the small parameters in one launch (a stage's with `overlap`) give the per-parameter launches' bits."
    shapes = [(1024,), (7,), (64, 1024), (4096, 33), (1,), (3, 5), (2048,)]
    def run(batch_below):
        g = torch.Generator(device='cuda').manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(s, device='cuda', generator=g) * 0.02) for s in shapes]
        for p in ps[::2]: keep_compute_copy(p)
        opt = AdamW([dict(params=ps[:4], weight_decay=0.1), dict(params=ps[4:], weight_decay=0.0)], lr=3e-4, betas=(0.9, 0.95),
                    state_dtype=state_dtype, batch_below=batch_below)
        if staged: opt.overlap([ps[:3], ps[3:5]], torch.device('cuda'))   # ps[5:] in no stage: updated last
        for i in range(3):
            for j, p in enumerate(ps): p.grad = None if (i == 1 and j == 1) else torch.randn(p.shape, device='cuda', generator=g)
            opt.grad_scale = torch.tensor(1.5 + i, device='cuda')
            opt.step()
        opt.join(); torch.cuda.synchronize()
        return ps, opt
    (a, oa), (b, ob) = run(0), run(1 << 20)
    for pa, pb in zip(a, b):
        assert torch.equal(pa, pb)
        for k in ('exp_avg', 'exp_avg_sq'): assert torch.equal(oa.state[pa][k], ob.state[pb][k])
        if getattr(pa, 'compute_copy', None) is not None: assert torch.equal(pa.compute_copy, pb.compute_copy)
