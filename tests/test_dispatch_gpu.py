"Dispatch kernels on the GPU: bf16 gather/combine (and their gradients) against the torch reference, with poisoned memory."
import pytest, torch
from pithtrain.dispatch import make_plan, make_plan_torch, gather, combine, gather_torch, combine_torch

pytestmark = pytest.mark.gpu

def _poison(nbytes=1 << 30):
    "Fill the caching allocator's free blocks with NaN so a kernel that skips an element shows it."
    torch.empty(nbytes // 2, dtype=torch.bfloat16, device='cuda').fill_(float('nan'))
    torch.cuda.synchronize()

def _ids(T, k, E, skew=False):
    scores = torch.rand(T, E, device='cuda')
    if skew: scores[:, : E // 8] += 0.5   # crowd a few experts, starve the rest
    ids = scores.topk(k, dim=1).indices
    return ids

@pytest.mark.parametrize('T,k,E,pad_to', [(8192, 8, 128, 1), (1000, 6, 64, 16), (333, 2, 7, 1), (5, 8, 256, 128)])
def test_plan_matches_torch(T, k, E, pad_to):
    ids = _ids(T, k, E, skew=True)
    a, b = make_plan(ids, E, pad_to), make_plan_torch(ids, E, pad_to)
    for name, u, v in zip(a._fields, a, b): assert torch.equal(u, v) if isinstance(u, torch.Tensor) else u == v, name

@pytest.mark.parametrize('T,k,E,H,pad_to', [(4096, 8, 128, 2048, 1), (777, 4, 16, 1000, 8), (64, 3, 5, 96, 1)])
def test_gather_combine_bf16(T, k, E, H, pad_to):
    torch.manual_seed(T)
    ids = _ids(T, k, E)
    plan = make_plan(ids, E, pad_to)
    x = torch.randn(T, H, device='cuda', dtype=torch.bfloat16, requires_grad=True)
    w = torch.rand(T, k, device='cuda', requires_grad=True)
    f = torch.randn(plan.order.numel(), H, device='cuda', dtype=torch.bfloat16)
    gout = torch.randn(T, H, device='cuda', dtype=torch.bfloat16)
    _poison()
    rows = gather(x, plan)
    out = combine(rows * f, w, plan)
    dx, dw = torch.autograd.grad(out, (x, w), gout)
    for t in (rows, out, dx, dw): assert not t.isnan().any()
    if plan.valid is not None: assert (rows[~plan.valid] == 0).all()
    # reference in fp32 on the same bf16 inputs
    xr, wr = x.detach().float().requires_grad_(), w.detach().clone().requires_grad_()
    rr = gather_torch(xr, plan)
    outr = combine_torch(rr * f.float(), wr, plan)
    dxr, dwr = torch.autograd.grad(outr, (xr, wr), gout.float())
    assert torch.equal(rows.float(), rr)                       # a copy is exact
    for a, b, tol in [(out, outr, 1e-2), (dx, dxr, 1e-2), (dw, dwr, 1e-2)]:
        err = ((a.double() - b.double()).norm() / b.double().norm()).item()
        assert err < tol, err
    # combine's row gradient: padding rows (no pair points there) must come back zero, not garbage
    r = (rows * f).detach().requires_grad_()
    _poison()
    drows, = torch.autograd.grad(combine(r, w, plan), (r,), gout)
    assert not drows.isnan().any()
    if plan.valid is not None: assert (drows[~plan.valid] == 0).all()
    # deterministic: same bits twice
    dx2, dw2 = torch.autograd.grad(combine(gather(x, plan) * f, w, plan), (x, w), gout)
    assert torch.equal(dx, dx2) and torch.equal(dw, dw2)

def test_debug_catches_bad_ids():
    ids = torch.randint(0, 8, (16, 2), device='cuda'); ids[3, 1] = 8
    with pytest.raises(ValueError, match='expert id out of range'): make_plan(ids, 8, debug=True)
    plan = make_plan(ids.clamp(max=7), 8)
    with pytest.raises(ValueError, match='shape mismatch'): gather(torch.randn(15, 4, device='cuda'), plan)
