"""GPU checks of programmatic dependent launch (`core.pdl`; opt-in by `PITHTRAIN_PDL=1`, which these tests set): a long
chain of dependent PDL kernels, eager and in a CUDA graph, reads every predecessor's writes (each program reads another
program's rows, so a kernel that ran ahead of its predecessor would read stale values); and the graphed, overlapped
training step gives the same parameters bit for bit with PDL on and off. (Not compiled: two compilations autotune Inductor's kernels separately, so their sums may differ
in the last bit whatever PDL does — the compiled step's Inductor kernels launch without PDL anyway.)

    python3 -m pytest -v tests/test_pdl_gpu.py
"""
import os, pytest, torch, triton, triton.language as tl
from pithtrain import core
from pithtrain.core import pdl, pdl_enter

pytestmark = pytest.mark.gpu

@pytest.fixture(autouse=True)
def _pdl_on(monkeypatch):
    "PDL on for each test (`core.pdl_on` reads the variable once: its cache cleared before and after)."
    monkeypatch.setenv('PITHTRAIN_PDL', '1'); core.pdl_on.cache_clear()
    yield
    core.pdl_on.cache_clear()

@triton.jit
def _shift_inc_kernel(x, y, n, PDL:tl.constexpr=False, B:tl.constexpr=1024):
    if PDL: pdl_enter()
    i = tl.program_id(0) * B + tl.arange(0, B)
    tl.store(y + i, tl.load(x + (n - 1 - i), mask=i < n) + 1, mask=i < n)   # reads the mirrored program's rows

def _chain(a, b, n_kernels):
    for _ in range(n_kernels // 2):
        _shift_inc_kernel[(triton.cdiv(a.numel(), 1024),)](a, b, a.numel(), **pdl())
        _shift_inc_kernel[(triton.cdiv(a.numel(), 1024),)](b, a, a.numel(), **pdl())

def test_pdl_is_on_for_hopper(monkeypatch):
    assert core.pdl_on() == (torch.cuda.get_device_capability()[0] >= 9)
    monkeypatch.delenv('PITHTRAIN_PDL'); core.pdl_on.cache_clear()
    assert not core.pdl_on() and pdl() == dict(PDL=False, launch_pdl=False)   # the default

@pytest.mark.parametrize('graphed', [False, True])
def test_pdl_chain_sees_every_predecessor(graphed):
    n, K = (1 << 22) + 77, 400
    a = torch.arange(n, device='cuda', dtype=torch.float32); b = torch.empty_like(a)
    ref = a.clone() + K   # an even number of mirrorings: each element back in its place, K added
    if graphed:
        s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s): _chain(a.clone(), b, 2)   # compile outside the capture
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g): _chain(a, b, K)
        for _ in range(3):
            a.copy_(torch.arange(n, device='cuda', dtype=torch.float32)); g.replay()
            assert torch.equal(a, ref)
    else:
        _chain(a, b, K); torch.cuda.synchronize()
        assert torch.equal(a, ref)

def _train(steps=4):
    from pithtrain.bench import pithtrain_step
    from pithtrain.qwen3_moe import Qwen3MoEConfig
    torch.manual_seed(0)
    c = Qwen3MoEConfig.preset('tiny')
    model, opt, step = pithtrain_step(c, 4, 128, torch.device('cuda'), compile=False, graph=True, overlap=True)
    for _ in range(steps): step()
    step.join(); torch.cuda.synchronize()
    return [p.detach().clone() for p in model.parameters()]

def test_graphed_step_same_with_pdl_off(monkeypatch):
    assert core.pdl_on() == (torch.cuda.get_device_capability()[0] >= 9)
    on = _train()
    monkeypatch.setenv('PITHTRAIN_PDL', '0'); core.pdl_on.cache_clear()
    assert not core.pdl_on()
    off = _train()
    assert len(on) == len(off)
    for i, (x, y) in enumerate(zip(on, off)): assert torch.equal(x, y), i

def test_expert_ffn_same_with_pdl_off(monkeypatch):
    "The expert path (Gluon products and weight gradients on Hopper, our glue kernels) in a CUDA graph, PDL on and off."
    from pithtrain.experts import expert_ffn
    from pithtrain.dispatch import make_plan
    def run():
        g = torch.Generator(device='cuda').manual_seed(3)
        T, E, k, H, I = 1000, 16, 4, 256, 192
        x = torch.randn(T, H, device='cuda', generator=g).bfloat16().requires_grad_()
        w1 = (torch.randn(E, H, 2 * I, device='cuda', generator=g) / H**0.5).bfloat16().requires_grad_()
        w2 = (torch.randn(E, I, H, device='cuda', generator=g) / I**0.5).bfloat16().requires_grad_()
        plan = make_plan(torch.randint(0, E, (T, k), device='cuda', generator=g), E)
        dy = torch.randn(T * k, H, device='cuda', generator=g).bfloat16()
        def step():
            y = expert_ffn(x, plan, w1, w2)
            return (y, *torch.autograd.grad(y, (x, w1, w2), dy))
        s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s): step()   # compile outside the capture
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph): outs = step()
        graph.replay(); torch.cuda.synchronize()
        return [t.detach().clone() for t in outs]
    on = run()
    monkeypatch.setenv('PITHTRAIN_PDL', '0'); core.pdl_on.cache_clear()
    off = run()
    for name, a, b in zip(['y', 'x', 'w1', 'w2'], on, off): assert torch.equal(a, b), name
