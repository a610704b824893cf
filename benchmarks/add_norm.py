"""A residual add + RMSNorm by hand-written Triton kernels against Inductor's, forward + backward in CUDA graphs.

Result (session 17, `results/add_norm-2026-11-30.json`, H200): at `small` the Triton pair takes 138.6 µs with the
residual and 103.7 without, against Inductor's 80.1 and 55.9 — not taken. (The Qwen3 rows favour Triton, 159.5 against
384.7 µs, but they are not a fair comparison: this script compiles the same function again at a new shape, where
Dynamo's automatic dynamic shapes likely built a dynamic-shape kernel, unlike the step's; not checked.)

The compiled `attend` region (`moe.MoEBlock.attend`) holds two norms a layer: `norm(x)` and `h = x + o; norm(h)`. The
kernel table (`results/e2e_kernels-small-compile-graph-overlap-v16-2026-11-29.txt`) shows Inductor's forward kernels
at memory speed (18 and 35 µs at `small`), its backward at 35 µs (17 calls, 0.60 ms a step), and after each backward an
ATen sum of the weight gradient's partial rows (Inductor's mix-order reduction): 12 µs each, 0.21 ms a step for
≈ 4 MB of fp32 partials. Here the backward keeps each program's Σ dy·x̂ in registers while it walks every NP-th row
block (as `layers._qknr_bwd_kernel` does) and one small launch adds the NP slots in a fixed order. If the pair beats
Inductor's by the ≈ 9 µs a norm the final sum costs, the next step is a custom op for `attend` (opaque to Inductor, as
`layers.qk_norm_rope` is) — measured in the step, since Inductor then fuses less around it.

Rows: Inductor (`torch.compile` of the eager add + norm, forward + backward through autograd) and the Triton pair,
both as the step runs them (bf16 activations, fp32 weight, fp32 inside), at `small` (T 16384, H 1024) and Qwen3
(T 16384, H 2048); each must match the eager fp32 reference (rel. error < 1e-2 for bf16 outputs, < 1e-4 for dw).

    PYTHONPATH=$PWD python3 benchmarks/add_norm.py                  # GPU; $OUT/add_norm.json
    TRITON_INTERPRET=1 python3 benchmarks/add_norm.py --cpu-smoke    # CPU: the kernels against the reference
"""
import os, sys, json, datetime, statistics
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch, triton, triton.language as tl

@triton.jit
def _add_norm_fwd_kernel(x, r, w, h, y, rstd, T, H, eps, HAS_R:tl.constexpr, BR:tl.constexpr, BH:tl.constexpr):
    "h = x + r (bf16, as torch adds), y = h·rsqrt(mean h² + eps)·w; rstd kept for the backward."
    rows = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    cols = tl.arange(0, BH)
    ok = (rows < T)[:, None] & (cols < H)[None, :]
    at = rows[:, None] * H + cols[None, :]
    v = tl.load(x + at, mask=ok, other=0.0).to(tl.float32)
    if HAS_R:
        v = (v + tl.load(r + at, mask=ok, other=0.0).to(tl.float32)).to(h.dtype.element_ty)
        tl.store(h + at, v, mask=ok)
        v = v.to(tl.float32)
    s = 1.0 / tl.sqrt_rn(tl.sum(v * v, 1) / H + eps)
    tl.store(rstd + rows, s, mask=rows < T)
    wt = tl.load(w + cols, mask=cols < H, other=0.0).to(tl.float32)
    tl.store(y + at, (v * s[:, None] * wt[None, :]).to(y.dtype.element_ty), mask=ok)

@triton.jit
def _add_norm_bwd_kernel(dy, dres, h, w, rstd, dh, slots, T, H, NP, HAS_D:tl.constexpr, BR:tl.constexpr, BH:tl.constexpr):
    "dh = rstd·(g − x̂·mean(g·x̂)) (+ dres), g = dy·w, x̂ = h·rstd; program p walks row blocks p, p + NP, … and writes"
    " its Σ dy·x̂ to slot p."
    p = tl.program_id(0)
    cols = tl.arange(0, BH)
    cok = cols < H
    wt = tl.load(w + cols, mask=cok, other=0.0).to(tl.float32)
    acc = tl.zeros((BH,), tl.float32)
    for b in range(p, tl.cdiv(T, BR), NP):
        rows = b * BR + tl.arange(0, BR).to(tl.int64)
        ok = (rows < T)[:, None] & cok[None, :]
        at = rows[:, None] * H + cols[None, :]
        s = tl.load(rstd + rows, mask=rows < T, other=0.0)
        xh = tl.load(h + at, mask=ok, other=0.0).to(tl.float32) * s[:, None]
        d = tl.load(dy + at, mask=ok, other=0.0).to(tl.float32)
        g = d * wt[None, :]
        out = s[:, None] * (g - xh * (tl.sum(g * xh, 1) / H)[:, None])
        if HAS_D: out += tl.load(dres + at, mask=ok, other=0.0).to(tl.float32)
        tl.store(dh + at, out.to(dh.dtype.element_ty), mask=ok)
        acc += tl.sum(d * xh, 0)
    tl.store(slots + p * H + cols, acc, mask=cok)

@triton.jit
def _slot_sum_kernel(slots, dw, NP, H, BH:tl.constexpr):
    "dw[c] = Σ_p slots[p, c] in slot order."
    cols = tl.program_id(0) * BH + tl.arange(0, BH)
    acc = tl.zeros((BH,), tl.float32)
    for p in range(0, NP):
        acc += tl.load(slots + p * H + cols, mask=cols < H, other=0.0)
    tl.store(dw + cols, acc, mask=cols < H)

def triton_add_norm(x, r, w, dy, dres, eps=1e-6, NP=132, BR=4, BRB=4):
    "Forward then backward of h = x + r, y = norm(h)·w by the kernels: (h, y, dh, dw)."
    T, H = x.shape
    BH = triton.next_power_of_2(H)
    h = torch.empty_like(x) if r is not None else x
    y, rstd = torch.empty_like(x), torch.empty(T, device=x.device)
    _add_norm_fwd_kernel[(triton.cdiv(T, BR),)](x, r if r is not None else x, w, h, y, rstd, T, H, eps, HAS_R=r is not None,
                                               BR=BR, BH=BH, num_warps=4)
    NP = min(NP, triton.cdiv(T, BRB))
    dh, slots, dw = torch.empty_like(x), torch.empty(NP, H, device=x.device), torch.empty(H, device=x.device)
    _add_norm_bwd_kernel[(NP,)](dy, dres if dres is not None else dy, h, w, rstd, dh, slots, T, H, NP, HAS_D=dres is not None,
                               BR=BRB, BH=BH, num_warps=8)
    _slot_sum_kernel[(triton.cdiv(H, 128),)](slots, dw, NP, H, BH=128)
    return h, y, dh, dw

def eager_add_norm(x, r, w, eps=1e-6):
    "The model's code: a bf16 residual add, then `layers.RMSNorm`'s arithmetic."
    h = x + r if r is not None else x
    hf = h.float()
    return h, ((hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)) * w.float()).to(x.dtype)

def reference(x, r, w, dy, dres, eps=1e-6):
    "fp32 autograd of the eager code on the same inputs: (h, y, dh, dw)."
    xs = [t.detach().float().requires_grad_() if t is not None else None for t in (x, r, w)]
    h = xs[0] + xs[1] if r is not None else xs[0]
    h = h + (h.to(x.dtype).float() - h).detach()   # the model's h is rounded to x's dtype (bf16); its gradient passes through
    y = eager_add_norm(h, None, xs[2], eps)[1]
    out = [(y, dy.float())] + ([(h, dres.float())] if dres is not None else [])
    gx, gw = torch.autograd.grad([o for o, _ in out], [xs[0], xs[2]], [g for _, g in out])
    return h, y, gx, gw

def rel(a, b): return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()

def inputs(T, H, dev, residual=True):
    g = torch.Generator(device=dev).manual_seed(0)
    dt = torch.bfloat16 if dev == 'cuda' else torch.float32   # the interpreter's bf16 is not the GPU's
    x, r, dy, dres = (torch.randn(T, H, device=dev, generator=g).to(dt) for _ in range(4))
    w = 1 + 0.3 * torch.randn(H, device=dev, generator=g)
    return x, (r if residual else None), w, dy, (dres if residual else None)

if __name__ == '__main__':
    smoke = '--cpu-smoke' in sys.argv
    dev = 'cpu' if smoke else 'cuda'
    SHAPES = {'tiny': (37, 48)} if smoke else {'small': (16384, 1024), 'qwen3-30b-a3b-6l': (16384, 2048)}
    res = {'date': str(datetime.date.today()), 'device': 'cpu' if smoke else torch.cuda.get_device_name(),
           'command': 'python3 benchmarks/add_norm.py', 'rows': []}
    for name, (T, H) in SHAPES.items():
        for residual in (True, False):
            x, r, w, dy, dres = inputs(T, H, dev, residual)
            ref = reference(x, r, w, dy, dres)
            out = triton_add_norm(x, r, w, dy, dres, NP=3 if smoke else 132)
            errs = [rel(a, b) for a, b in zip(out, ref)]
            assert all(e < 1e-2 for e in errs[:3]) and errs[3] < 1e-4, errs
            print(f'{name} residual={residual}: rel. errors h, y, dh, dw {[f"{e:.1e}" for e in errs]}', flush=True)
            if smoke: continue
            from qk_norm_rope import graph_us
            xs = [t.detach().requires_grad_() if t is not None else None for t in (x, r, w)]
            comp = torch.compile(eager_add_norm)
            def inductor():
                h, y = comp(*xs)
                outs = [(y, dy)] + ([(h, dres)] if dres is not None else [])
                return torch.autograd.grad([o for o, _ in outs], [t for t in xs if t is not None], [g for _, g in outs])
            ind = inductor()
            assert rel(ind[0].float(), ref[2].float()) < 1e-2 and rel(ind[-1], ref[3]) < 1e-4
            runs = {'inductor': inductor, 'triton': lambda: triton_add_norm(x, r, w, dy, dres)}
            ts = {k: [] for k in runs}
            for _ in range(3):
                for k, fn in runs.items(): ts[k].append(graph_us(fn))
            for k, t in ts.items():
                row = dict(preset=name, residual=residual, variant=k, us_median=round(statistics.median(t), 2), us=[round(v, 2) for v in t])
                res['rows'].append(row); print(row, flush=True)
    if os.environ.get('OUT') and not smoke: json.dump(res, open(os.path.join(os.environ['OUT'], 'add_norm.json'), 'w'), indent=1)
