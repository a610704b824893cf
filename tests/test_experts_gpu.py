"GPU checks of the Triton expert FFN: bf16 against the fp32 reference on 50 random shapes and routings, every element written."
import os, random
os.environ.setdefault('PITHTRAIN_AUTOTUNE', '0')  # 50 shapes: skip per-shape autotuning (the benchmark tunes)
import pytest, torch
from pithtrain.experts import expert_ffn, expert_ffn_reference, _token_sum

def _plan(ids, E):
    "Routing plan fields from (T, k) ids (stable argsort; the test does not depend on dispatch)."
    from collections import namedtuple
    flat = ids.reshape(-1)
    order = flat.argsort(stable=True)
    offsets = torch.zeros(E + 1, dtype=torch.int32, device=ids.device)
    offsets[1:] = torch.bincount(flat, minlength=E).cumsum(0)
    inv = torch.empty_like(order); inv[order] = torch.arange(order.numel(), device=ids.device)
    return namedtuple('Plan', 'order token_idx offsets inv')(order, order // ids.shape[1], offsets, inv)

def _ids(T, E, k, kind, g):
    "Expert ids: balanced, skewed (hot experts), one hot expert, or a few experts with all tokens."
    logits = torch.randn(T, E, device='cuda', generator=g)
    if kind == 'skewed': logits += torch.linspace(4.0, 0, E, device='cuda')
    if kind == 'very_skewed': logits[:, 0] += 20
    if kind == 'few': logits[:, E // 2:] -= 100
    return logits.topk(k, -1).indices

def _poison():
    "Fill the caching allocator's free blocks with NaN bytes, so an unwritten output element shows up."
    torch.cuda.synchronize()
    big = [torch.empty(2**28, dtype=torch.uint8, device='cuda') for _ in range(2)]
    small = [torch.empty(2**19, dtype=torch.uint8, device='cuda') for _ in range(64)]
    for t in big + small: t.fill_(0xFF)
    del big, small

def _rel(a, b): return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()

CASES = []
_r = random.Random(0)
for i in range(50):
    E = _r.choice([1, 2, 8, 32, 64, 128])
    k = min(E, _r.choice([1, 2, 4, 6, 8]))
    CASES.append(dict(T=_r.choice([1, 7, 100, 513, 1024, 2048, 4096]), E=E, k=k, H=_r.choice([128, 192, 320, 1024]),
                      I=_r.choice([64, 96, 256, 384]), kind=_r.choice(['balanced', 'skewed', 'very_skewed', 'few']),
                      bias=_r.random() < 0.3, oai=_r.random() < 0.25, master=_r.random() < 0.3, seed=i))

@pytest.mark.gpu
@pytest.mark.parametrize('case', CASES, ids=lambda c: '-'.join(f'{k}{v}' for k, v in c.items() if k != 'seed'))
def test_expert_ffn_bf16(case): _check_case(case)

@pytest.mark.gpu
@pytest.mark.parametrize('case', CASES[::2], ids=lambda c: '-'.join(f'{k}{v}' for k, v in c.items() if k != 'seed'))
def test_expert_ffn_bf16_gluon_products(case, monkeypatch):
    "Half the cases with the warp-specialised kernels (fc1 and the plain products) taken eagerly too (by default only inside"
    " a graph capture)."
    from pithtrain import experts as X
    monkeypatch.setattr(X, '_WS', 'always')
    _check_case(case)

def _check_case(case):
    "expert_ffn in bf16 against the fp32 reference: output and every gradient, every element written."
    T, E, k, H, I = (case[n] for n in 'T E k H I'.split())
    g = torch.Generator(device='cuda').manual_seed(case['seed'])
    wdt = torch.float32 if case['master'] else torch.bfloat16
    x = torch.randn(T, H, device='cuda', generator=g).bfloat16().requires_grad_()
    w1 = (torch.randn(E, H, 2 * I, device='cuda', generator=g) / H**0.5).to(wdt).requires_grad_()
    w2 = (torch.randn(E, I, H, device='cuda', generator=g) / I**0.5).to(wdt).requires_grad_()
    b1 = (torch.randn(E, 2 * I, device='cuda', generator=g) * 0.1).to(wdt).requires_grad_() if case['bias'] else None
    b2 = (torch.randn(E, H, device='cuda', generator=g) * 0.1).to(wdt).requires_grad_() if case['bias'] else None
    plan = _plan(_ids(T, E, k, case['kind'], g), E)
    kw = dict(act='swiglu_oai', interleaved=True) if case['oai'] else {}
    ins = [t for t in (x, w1, w2, b1, b2) if t is not None]
    dy = torch.randn(T * k, H, device='cuda', generator=g).bfloat16()
    _poison()
    y = expert_ffn(x, plan, w1, w2, b1, b2, **kw)
    grads = torch.autograd.grad(y, ins, dy)
    ref_in = [t.detach().float().bfloat16().float().requires_grad_() for t in ins]  # the same values, in fp32
    rx, rw1, rw2, *rb = ref_in
    ref = expert_ffn_reference(rx, plan, rw1, rw2, *(rb or [None, None]), **kw)
    rgrads = torch.autograd.grad(ref, ref_in, dy.float())
    assert y.dtype == torch.bfloat16 and y.shape == (T * k, H)
    assert torch.isfinite(y).all(), 'output has unwritten (NaN) elements'
    for name, gr, t in zip(['x', 'w1', 'w2', 'b1', 'b2'], grads, ins):
        assert gr.dtype == t.dtype, name
        assert torch.isfinite(gr).all(), f'grad {name} has unwritten (NaN) elements'
    errs = {n: _rel(a, b) for n, a, b in zip(['y', 'x', 'w1', 'w2', 'b1', 'b2'], [y, *grads], [ref, *rgrads])}
    assert max(errs.values()) <= 1e-2, errs
    counts = plan.offsets.diff()
    if (counts == 0).any():  # experts with no rows: exactly zero weight gradients
        assert grads[1][counts == 0].abs().max().item() == 0 and grads[2][counts == 0].abs().max().item() == 0

@pytest.mark.gpu
def test_expert_ffn_autocast_fp32_masters():
    "fp32 tokens and master weights under bf16 autocast: bf16 products, fp32 gradients."
    torch.manual_seed(0)
    T, E, k, H, I = 512, 16, 4, 256, 128
    x = torch.randn(T, H, device='cuda', requires_grad=True)
    w1 = (torch.randn(E, H, 2 * I, device='cuda') / H**0.5).requires_grad_()
    w2 = (torch.randn(E, I, H, device='cuda') / I**0.5).requires_grad_()
    plan = _plan(torch.rand(T, E, device='cuda').topk(k, -1).indices, E)
    with torch.autocast('cuda', dtype=torch.bfloat16):
        y = expert_ffn(x, plan, w1, w2)
    assert y.dtype == torch.bfloat16
    y.float().square().sum().backward()
    assert x.grad.dtype == w1.grad.dtype == w2.grad.dtype == torch.float32
    ref = expert_ffn_reference(x.detach(), plan, w1.detach(), w2.detach())
    assert _rel(y, ref) < 1e-2

@pytest.mark.gpu
def test_token_sum_weighted():
    torch.manual_seed(0)
    T, k, H = 300, 3, 200
    rows = torch.randn(T * k, H, device='cuda', dtype=torch.bfloat16)
    inv = torch.randperm(T * k, device='cuda')
    w = torch.rand(T, k, device='cuda')
    ref = (rows.float()[inv].view(T, k, H) * w[..., None]).sum(1)
    assert _rel(_token_sum(rows, inv, T, torch.float32, w), ref) < 1e-6

@pytest.mark.gpu
def test_wgrad_notes_grad_sq_norm_and_clip_uses_it():
    "The wgrad kernel's per-tile sums of squares give ‖dW‖² (noted on the parameter); clip_grad_norm_ uses them and matches torch."
    from pithtrain.core import noted_sq_norm
    from pithtrain.dispatch import make_plan
    from pithtrain.distributed import clip_grad_norm_
    torch.manual_seed(0)
    T, E, k, H, I = 4096, 64, 8, 1024, 384   # I·2 = 768: not a multiple of every tile width
    x = torch.randn(T, H, device='cuda', dtype=torch.bfloat16)
    ids = torch.randint(0, E - 2, (T, k), device='cuda')   # the last two experts get no rows
    plan = make_plan(ids, E)
    w1 = torch.nn.Parameter(torch.randn(E, H, 2 * I, device='cuda') * 0.02); w2 = torch.nn.Parameter(torch.randn(E, I, H, device='cuda') * 0.02)
    with torch.autocast('cuda', dtype=torch.bfloat16): y = expert_ffn(x, plan, w1, w2)
    y.float().square().mean().backward()
    for w in (w1, w2):
        ref = w.grad.double().square().sum()
        assert noted_sq_norm(w) is not None and abs(noted_sq_norm(w).double() / ref - 1) < 1e-5
    n_ref = torch.nn.utils.clip_grad_norm_([w1, w2], float('inf'))
    n = clip_grad_norm_([w1, w2], float('inf'))
    assert abs(n / n_ref - 1) < 1e-5
    w1.grad.mul_(2.0)   # changed after the kernel wrote it: measured again, not taken from the note
    assert noted_sq_norm(w1) is None and abs(clip_grad_norm_([w1], float('inf')) / w1.grad.norm() - 1) < 1e-5

@pytest.mark.gpu
def test_wgrad_sq_slots_survive_autotuning(monkeypatch):
    "While the Triton weight-gradient kernel autotunes, trials with smaller tiles fill sq slots the chosen tiles never"
    " overwrite: the autotuner zeroes sq before the final run, so the first call's Σ dW² is right."
    from pithtrain import experts as X
    monkeypatch.setattr(X, '_AUTOTUNE', True)
    cfgs = X._cfgs((128, 128, 64, 8, 4, False), (256, 128, 64, 8, 3, False), (128, 256, 64, 8, 3, False))
    monkeypatch.setattr(X, '_wg', X._tuned(X._even_mn(X._wgrad_kernel), cfgs, ['KO', 'NO', 'MB', 'TMA'], reset=['sq']))
    monkeypatch.setattr(X, '_WS_WG', False)
    g = torch.Generator(device='cuda').manual_seed(5)
    offs = torch.tensor([0, 300, 300, 1000, 1500], device='cuda', dtype=torch.int32)
    a, b = (torch.randn(1500, n, device='cuda', generator=g).bfloat16() for n in (512, 768))
    dw = torch.empty(4, 512, 768, device='cuda')
    sq = X._sq_slots(dw)   # slots for 128 × 128 tiles: more than a 256-wide choice fills
    X._wgrad(a, None, b, offs, dw, None, sq)
    assert abs(sq.sum().item() / (dw.double() ** 2).sum().item() - 1) < 1e-5

@pytest.mark.gpu
@pytest.mark.parametrize('tma', [True, False], ids=['tma', 'pointers'])
def test_every_config_both_load_paths(tma, monkeypatch):
    "Every autotune configuration of the five kernels, TMA (tensor-descriptor) and pointer loads, routing weights folded in, awkward sizes."
    import pithtrain.experts as X
    g = torch.Generator(device='cuda').manual_seed(1)
    T, E, k, H, I = 300, 8, 2, 320, 96   # experts with 0 and 1 rows, sizes not multiples of the tiles
    ids = _ids(T, E, k, 'few', g); ids[0, 0] = E - 1   # expert E-1: one row
    plan = _plan(ids, E)
    x = torch.randn(T, H, device='cuda', generator=g).bfloat16().requires_grad_()
    w1 = (torch.randn(E, H, 2 * I, device='cuda', generator=g) / H**0.5).requires_grad_()
    w2 = (torch.randn(E, I, H, device='cuda', generator=g) / I**0.5).requires_grad_()
    wts = torch.rand(T, k, device='cuda', generator=g).requires_grad_()
    dy = torch.randn(T * k, H, device='cuda', generator=g).bfloat16()
    ins = (x, w1, w2, wts)
    ref = expert_ffn_reference(x.float(), plan, w1, w2, weights=wts)
    rgrads = torch.autograd.grad(ref, ins, dy.float())
    monkeypatch.setattr(X, '_TMA', tma)
    for name in ('_fc1', '_mm', '_dh', '_wg', '_pmm'):
        tuned = getattr(X, name)
        monkeypatch.setattr(X, '_DH_SPLIT', name != '_dh')   # `_dh` serves the TMA path only with the split off
        monkeypatch.setattr(X, '_PERSIST', name != '_mm')    # with TMA, `_mm` serves the plain products only without `_pmm`
        for shape in X._SHAPES[name]:
            cfg = X._cfgs(shape)
            monkeypatch.setattr(X, name, X._tuned(tuned.fn, cfg, tuned.keys))
            _poison()
            y = expert_ffn(x, plan, w1, w2, weights=None if name == '_dh' else wts)   # the fused `_dh` takes no weights
            r, rg = (expert_ffn_reference(x.float(), plan, w1, w2), None) if name == '_dh' else (ref, rgrads)
            grads = torch.autograd.grad(y, ins[:3] if name == '_dh' else ins, dy)
            if rg is None: rg = torch.autograd.grad(r, ins[:3], dy.float())
            errs = [_rel(a, b) for a, b in zip((y, *grads), (r, *rg))]
            assert max(errs) <= 1e-2, (name, shape, errs)
        monkeypatch.setattr(X, name, tuned)

def _hopper_gluon():
    from pithtrain import experts as X
    return torch.cuda.is_available() and X._GLUON and torch.cuda.get_device_capability()[0] == 9

def _grouped(sizes, K, NO, tw, seed):
    "Offsets, rows a (N, K) and weights (E, K, NO) — or (E, NO, K) read transposed — in bf16, and the fp32 reference."
    g = torch.Generator(device='cuda').manual_seed(seed)
    offs = torch.tensor([0] + sizes, device='cuda').cumsum(0).to(torch.int32)
    N, E = sum(sizes), len(sizes)
    a = torch.randn(N, K, device='cuda', generator=g).bfloat16()
    w = (torch.randn(E, NO, K, device='cuda', generator=g) if tw else torch.randn(E, K, NO, device='cuda', generator=g)) / K**0.5
    w = w.bfloat16()
    o = offs.tolist()
    ref = torch.cat([a[o[e]:o[e + 1]].float() @ (w[e].float().T if tw else w[e].float()) for e in range(E)])
    return offs, a, w, ref

@pytest.mark.gpu
@pytest.mark.skipif(not _hopper_gluon(), reason='the warp-specialised products need Gluon and a Hopper GPU')
@pytest.mark.parametrize('tw,K,NO', [(False, 512, 1024), (True, 512, 1024), (False, 192, 136), (True, 192, 136),
                                     (True, 200, 96), (False, 1024, 96), (True, 1024, 2048)])
def test_ws_products_against_reference_and_pmm(tw, K, NO, monkeypatch):
    "The Gluon kernel: experts of 0, 1, 127, 128, 129, 300 and 1000 rows, partial column tiles; rows past the last expert untouched."
    from pithtrain import experts as X
    sizes = [0, 1, 127, 128, 129, 300, 0, 1000, 5]
    offs, a, w, ref = _grouped(sizes, K, NO, tw, seed=K + NO + tw)
    N = a.shape[0]
    full = torch.full((N + 64, NO), float('nan'), device='cuda', dtype=torch.bfloat16)
    c = X._pmm_ws(a, offs, w, full[:N], K, NO, tw)
    torch.cuda.synchronize()
    assert full[N:].isnan().all(), 'a store went past the last expert'
    assert not c.isnan().any(), 'an output element was not written'
    assert _rel(c, ref) < 1e-2
    monkeypatch.setattr(X, '_WS', '0')   # the Triton persistent kernel (or the per-tile one) on the same product
    swk, swn = (w.stride(2), w.stride(1)) if tw else (w.stride(1), w.stride(2))
    t = X._launch(X._mm, a, None, offs, w, None, torch.empty(N, NO, device='cuda', dtype=torch.bfloat16), None, K, NO, NO, swn, swk, 0)
    assert _rel(c, t) < 1e-6

@pytest.mark.gpu
@pytest.mark.skipif(not _hopper_gluon(), reason='the warp-specialised products need Gluon and a Hopper GPU')
@pytest.mark.parametrize('K,I,roww', [(1024, 512, False), (1024, 512, True), (192, 136, False), (128, 96, True), (320, 768, True)])
def test_ws_fc1_against_reference_and_fc1(K, I, roww, monkeypatch):
    "fc1 by the Gluon kernel: h and gate|up of experts of 0 … 1000 rows, partial column tiles (I not a multiple of 64), row"
    " weights; equal to the Triton `_fc1`; rows past the last expert untouched."
    from pithtrain import experts as X
    sizes = [0, 1, 127, 128, 129, 300, 0, 1000, 5]
    offs, a, w, gu_ref = _grouped(sizes, K, 2 * I, False, seed=K + I + roww)
    N = a.shape[0]
    rw = torch.rand(N, device='cuda') if roww else None
    g, u = gu_ref[:, :I], gu_ref[:, I:]
    h_ref = torch.nn.functional.silu(g) * u * (rw[:, None] if roww else 1)
    hf = torch.full((N + 64, I), float('nan'), device='cuda', dtype=torch.bfloat16)
    guf = torch.full((N + 64, 2 * I), float('nan'), device='cuda', dtype=torch.bfloat16)
    X._fc1_ws(a, offs, w, hf[:N], guf[:N], rw)
    torch.cuda.synchronize()
    assert hf[N:].isnan().all() and guf[N:].isnan().all(), 'a store went past the last expert'
    h, gu = hf[:N], guf[:N]
    assert not (h.isnan().any() or gu.isnan().any()), 'an output element was not written'
    assert _rel(gu, gu_ref) < 1e-2 and _rel(h, h_ref) < 2e-2
    monkeypatch.setattr(X, '_WS', '0')   # the Triton kernel on the same product
    ht, gut = torch.empty_like(h), torch.empty_like(gu)
    X._launch(X._fc1, a, None, offs, w, None, ht, gut, K, I, I, w.stride(2), w.stride(1), 1, rw=rw)
    assert _rel(h, ht) < 1e-6 and _rel(gu, gut) < 1e-6

@pytest.mark.gpu
@pytest.mark.skipif(not _hopper_gluon(), reason='the warp-specialised products need Gluon and a Hopper GPU')
@pytest.mark.parametrize('KO,NO,fp32', [(1024, 1024, True), (192, 136, True), (512, 1024, False), (128, 96, True)])
def test_ws_wgrad_against_reference_and_triton(KO, NO, fp32, monkeypatch):
    "The Gluon weight gradients: experts of 0, 1, 63, 64, 65 (k-steps of 64 rows: the last one partial), 200, 1000 rows,"
    " partial tiles; empty experts exactly zero; equal to the Triton `_wgrad`; tile sums of squares; nothing past dw written."
    from pithtrain import experts as X
    sizes = [0, 1, 63, 64, 65, 200, 0, 1000, 5]
    g = torch.Generator(device='cuda').manual_seed(KO + NO)
    offs = torch.tensor([0] + sizes, device='cuda').cumsum(0).to(torch.int32)
    N, E = sum(sizes), len(sizes)
    a = torch.randn(N, KO, device='cuda', generator=g).bfloat16()
    b = torch.randn(N, NO, device='cuda', generator=g).bfloat16()
    dt = torch.float32 if fp32 else torch.bfloat16
    full = torch.full((E + 1, KO, NO), float('nan'), device='cuda', dtype=dt)
    dw, sq = full[:E], X._sq_slots(full[:E])
    X._wgrad_ws(a, b, offs, dw, sq)
    torch.cuda.synchronize()
    assert full[E:].isnan().all(), 'a store went past dw'
    o = offs.tolist()
    ref = torch.stack([a[o[e]:o[e + 1]].float().T @ b[o[e]:o[e + 1]].float() for e in range(E)])
    assert _rel(dw, ref) < (1e-5 if fp32 else 1e-2)
    assert (dw[0] == 0).all() and (dw[6] == 0).all()
    assert abs(sq.sum().item() / (dw.double() ** 2).sum().item() - 1) < 1e-5
    d2, sq2 = torch.empty_like(dw), X._sq_slots(dw)   # tiles in plain expert order instead of `expert_order`'s
    X._wgrad_ws(a, b, offs, d2, sq2, order=torch.arange(E, device='cuda', dtype=torch.int32))
    assert torch.equal(d2, dw) and torch.equal(sq2, sq), 'the tile order changed the gradients or their slots'
    monkeypatch.setattr(X, '_WS_WG', False)   # the Triton kernel on the same operands
    t, tsq = torch.empty_like(dw), X._sq_slots(dw)
    X._wgrad(a, None, b, offs, t, None, tsq)
    assert _rel(dw, t) < 1e-6

@pytest.mark.gpu
@pytest.mark.skipif(not _hopper_gluon(), reason='the warp-specialised products need Gluon and a Hopper GPU')
def test_ws_products_in_a_cuda_graph():
    "Captured with its tile table, replayed on new rows and new routing offsets in the same buffers."
    from pithtrain import experts as X
    offs, a, w, _ = _grouped([300, 0, 257, 1, 466], 256, 384, False, seed=1)
    c = torch.empty(a.shape[0], 384, device='cuda', dtype=torch.bfloat16)
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s): X._pmm_ws(a, offs, w, c, 256, 384, False)   # compile outside the capture
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph): X._pmm_ws(a, offs, w, c, 256, 384, False)
    offs2, a2, w2, ref2 = _grouped([10, 500, 0, 300, 214], 256, 384, False, seed=2)
    offs.copy_(offs2); a.copy_(a2); w.copy_(w2)
    graph.replay(); torch.cuda.synchronize()
    assert _rel(c, ref2) < 1e-2

@pytest.mark.gpu
def test_expert_ffn_in_a_cuda_graph_equals_eager():
    "Forward and backward captured (the Gluon products on Hopper, their table kept for the backward) equal the eager step."
    from pithtrain import experts as X
    g = torch.Generator(device='cuda').manual_seed(3)
    T, E, k, H, I = 1000, 16, 4, 256, 192
    x = torch.randn(T, H, device='cuda', generator=g).bfloat16().requires_grad_()
    w1 = (torch.randn(E, H, 2 * I, device='cuda', generator=g) / H**0.5).bfloat16().requires_grad_()
    w2 = (torch.randn(E, I, H, device='cuda', generator=g) / I**0.5).bfloat16().requires_grad_()
    plan = _plan(_ids(T, E, k, 'skewed', g), E)
    dy = torch.randn(T * k, H, device='cuda', generator=g).bfloat16()
    def step():
        y = expert_ffn(x, plan, w1, w2)
        return (y, *torch.autograd.grad(y, (x, w1, w2), dy))
    eager = [t.detach().clone() for t in step()]   # detached: a clone of y would keep its graph, made on the legacy stream, alive
    s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s): step()   # warm up outside the capture
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph): outs = step()
    graph.replay(); torch.cuda.synchronize()
    for name, a, b in zip(['y', 'x', 'w1', 'w2'], outs, eager): assert _rel(a, b) < 1e-6, name
