"""Probe (not in the library): can the AdamW step run *beside* the forward's kernels if it owns a few SMs?

The overlapped step (`AdamW.overlap`) runs the update on a side stream, but its launches (one program per 1024
elements, ~100 K programs per layer) only fill the gaps the forward's kernels leave: 0.55 of 6.74 ms ran beside
another kernel (`results/e2e_kernels-small-compile-graph-overlap-2026-11-29.txt`). Here the update is a persistent
kernel of S programs that each fill an SM (32 warps: no GEMM program fits beside one), and the GEMM beside it leaves
those S SMs alone: the persistent products run 132 − S programs, cuBLAS gets an SM carve-out of S, the
non-persistent kernels (fc1, attention) take whatever SMs are free. Measured, µs: each side alone (full GPU, and
with S SMs), and both at once (the update on a high-priority side stream, launched first).

    PYTHONPATH=$PWD python3 benchmarks/adamw_sm_share.py                  # GPU; $OUT/adamw_sm_share.json
    PYTHONPATH=$PWD python3 benchmarks/adamw_sm_share.py --coreside       # GPU: small update programs on every SM, beside
                                                                          # the GEMM's (no SM left to the update alone)
    TRITON_INTERPRET=1 python3 benchmarks/adamw_sm_share.py --cpu-smoke   # CPU: the persistent update equals the library's
"""
import os, sys, json, datetime, statistics
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch, triton, triton.language as tl
from pithtrain import experts as X, optim as O

@triton.jit
def _adamw_persistent(p_ptr, g_ptr, m_ptr, v_ptr, c_ptr, n, decay, step_size, b1, b2, eps, bc2_sqrt, NPROG,
                      BLOCK:tl.constexpr):
    "`optim._adamw_kernel` (fp32 moments, compute copy written) with program p taking blocks p, p + NPROG, …"
    for b in tl.range(tl.program_id(0), tl.cdiv(n, BLOCK), NPROG):
        offs = b * BLOCK + tl.arange(0, BLOCK).to(tl.int64)   # b · BLOCK < 2³¹ here
        ok = offs < n
        g = tl.load(g_ptr + offs, mask=ok, other=0.0)
        m = tl.load(m_ptr + offs, mask=ok, other=0.0)
        v = tl.load(v_ptr + offs, mask=ok, other=0.0)
        p = tl.load(p_ptr + offs, mask=ok, other=0.0)
        m = m + (1.0 - b1) * (g - m)
        v = b2 * v + (1.0 - b2) * g * g
        p = p * decay - step_size * tl.div_rn(m, tl.div_rn(tl.sqrt_rn(v), bc2_sqrt) + eps)
        tl.store(m_ptr + offs, m, mask=ok)
        tl.store(v_ptr + offs, v, mask=ok)
        tl.store(p_ptr + offs, p, mask=ok)
        tl.store(c_ptr + offs, p.to(c_ptr.dtype.element_ty), mask=ok)

HP = (0.99, 1e-3, 0.9, 0.95, 1e-8, 0.5)   # decay, step size, b1, b2, eps, sqrt(1 - b2^t)

def state(n, dev):
    "Parameter, gradient, moments (fp32) and the bf16 compute copy of n elements."
    return [torch.randn(n, device=dev), torch.randn(n, device=dev) * 1e-3, torch.zeros(n, device=dev),
            torch.rand(n, device=dev) * 1e-6, torch.empty(n, device=dev, dtype=torch.bfloat16)]

def lib_update(st):
    "The library's kernel (one program per 1024 elements)."
    w, g, m, v, c = st
    O._adamw_kernel[(triton.cdiv(w.numel(), 1024),)](w, g, m, v, c, w, w.numel(), *HP, 0, HAS_GS=False, COPY=True, SR=False, BLOCK=1024)

def p_update(st, S, warps=32, block=8192):
    "The persistent kernel with S programs."
    w, g, m, v, c = st
    _adamw_persistent[(S,)](w, g, m, v, c, w.numel(), *HP, S, BLOCK=block, num_warps=warps)

def smoke():
    torch.manual_seed(0)
    a = state(5000, 'cpu'); b = [t.clone() for t in a]
    lib_update(a); p_update(b, 3, warps=4, block=256)
    for x, y in zip(a, b): assert torch.equal(x, y), (x - y).abs().max()
    print('persistent update equals the library kernel')

def timed(fn, reps=7):
    "Median wall time (µs) of fn() between two events on the current stream."
    ts = []
    for _ in range(reps):
        torch.cuda.synchronize()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record(); fn(); e1.record(); torch.cuda.synchronize()
        ts.append(e0.elapsed_time(e1) * 1e3)
    return statistics.median(ts)

def small_gemms(nsm):
    """Makers of the `small` step's products, each taking S, the SMs left to the update (0: the whole GPU): fc2 (the
    persistent `_pmm` on nsm − S programs), fc1 (per tile: takes the SMs that are free), a dense cuBLAS product (SM
    carve-out S), cuDNN attention; with the repeats that make each a few ms."""
    dev, bf = 'cuda', torch.bfloat16
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from experts_sweep import routing
    T, k, E, H, I = 16384, 8, 64, 1024, 512
    plan, offs = routing(T, k, E)
    N = plan.token_idx.numel()
    xa, hh = torch.randn(N, H, device=dev, dtype=bf), torch.randn(N, I, device=dev, dtype=bf)
    w1, w2 = torch.randn(E, H, 2 * I, device=dev, dtype=bf) * 0.02, torch.randn(E, I, H, device=dev, dtype=bf) * 0.02
    y, h, gu = torch.empty(N, H, device=dev, dtype=bf), torch.empty(N, I, device=dev, dtype=bf), torch.empty(N, 2 * I, device=dev, dtype=bf)
    xd, wd = torch.randn(T, H, device=dev, dtype=bf), torch.randn(H, 3 * H, device=dev, dtype=bf) * 0.02
    q = torch.randn(8, 16, 2048, 64, device=dev, dtype=bf); kv = torch.randn(8, 16, 2048, 64, device=dev, dtype=bf)
    def fc2(S):
        npg = nsm - S
        return lambda: X._pmm[(npg,)](X._desc(hh), X._desc(w2), offs, y, y, E, I, H, y.stride(0), npg, MB=X._mb(N),
                                      HAS_BIAS=False, TW=False, EP2=triton.next_power_of_2(E))
    def fc1(S): return lambda: X._launch(X._fc1, xa, None, offs, w1, None, h, gu, H, I, I, w1.stride(2), w1.stride(1), 1)
    def dense(S):
        def f():
            torch._C._set_sm_carveout_experimental(S or None)
            try: torch.mm(xd, wd)
            finally: torch._C._set_sm_carveout_experimental(None)
        return f
    def attn(S): return lambda: torch.nn.functional.scaled_dot_product_attention(q, kv, kv, is_causal=True)
    return {'fc2': (fc2, 12), 'fc1': (fc1, 6), 'dense-mm': (dense, 40), 'attention': (attn, 16)}

def beside(update, g, reps, side):
    "The update on the high-priority side stream, launched first, and `reps` calls of g on the current stream."
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side): update()
    for _ in range(reps): g()
    torch.cuda.current_stream().wait_stream(side)

def start():
    "The result dict, the update's state (one `small` layer's expert weights: 64 × 3 × 1024 × 512) and its bytes in GB."
    nsm = torch.cuda.get_device_properties(0).multi_processor_count
    res = dict(date=datetime.date.today().isoformat(), device=torch.cuda.get_device_name(),
               command='python3 benchmarks/adamw_sm_share.py ' + ' '.join(sys.argv[1:]), sms=nsm, update={}, rows=[])
    n = 100_663_296
    return res, nsm, state(n, 'cuda'), 30 * n / 1e9

def time_update(res, key, fn, gb):
    "Time one update variant into res['update'][key] (µs, TB/s)."
    t = timed(fn)
    res['update'][key] = dict(us=round(t, 1), tb_s=round(gb / t * 1e3, 2))
    return res['update'][key]

def coreside():
    """The update as 1 or 2 small programs per SM (4 warps, 72 registers a thread), so they fit beside a GEMM program that
    leaves registers free (the persistent products: 180 a thread × 256 threads); fc1 (255 × 256) and others may not."""
    res, nsm, st, gb = start()
    out = os.environ.get('OUT')
    lib_alone = time_update(res, 'library', lambda: lib_update(st), gb)['us']
    setups = [(nsm, 4, 1024), (2 * nsm, 4, 1024), (nsm, 8, 2048)]
    for S, w, b in setups: time_update(res, f'S{S}-w{w}-b{b}', lambda: p_update(st, S, w, b), gb)
    print(res['update'], flush=True)
    side = torch.cuda.Stream(priority=-1)
    for name, (mk, reps) in small_gemms(nsm).items():
        g = mk(0)
        g(); torch.cuda.synchronize()
        full = timed(lambda: [g() for _ in range(reps)])
        for S, w, b in setups:
            t = timed(lambda: beside(lambda: p_update(st, S, w, b), g, reps, side))
            row = dict(gemm=name, reps=reps, S=S, warps=w, block=b, gemm_us=round(full, 1), update_us=res['update'][f'S{S}-w{w}-b{b}']['us'],
                       both_us=round(t, 1), serial_us=round(full + lib_alone, 1), saved_us=round(full + lib_alone - t, 1))
            res['rows'].append(row); print(row, flush=True)
        if out: json.dump(res, open(os.path.join(out, 'adamw_coreside.json'), 'w'), indent=1)

def main():
    res, nsm, st, gb = start()
    out = os.environ.get('OUT')
    def save():
        if out: json.dump(res, open(os.path.join(out, 'adamw_sm_share.json'), 'w'), indent=1)
    print('library update', time_update(res, 'library', lambda: lib_update(st), gb), flush=True)
    for S in (8, 12, 16, 24, 32, 48):
        for warps, block in ((32, 8192), (32, 16384), (16, 8192)):
            print(S, warps, block, time_update(res, f'S{S}-w{warps}-b{block}', lambda: p_update(st, S, warps, block), gb), flush=True)
    save()
    side = torch.cuda.Stream(priority=-1)
    for name, (mk, reps) in small_gemms(nsm).items():
        for f in (mk(0), mk(16)): f(); torch.cuda.synchronize()   # autotune / compile first
        full = timed(lambda: [mk(0)() for _ in range(reps)])
        lib_alone = res['update']['library']['us']
        res['rows'].append(dict(gemm=name, reps=reps, S=0, gemm_us=round(full, 1), serial_us=round(full + lib_alone, 1)))
        print(res['rows'][-1], flush=True)
        for S in (8, 16, 24, 32):
            g = mk(S)
            alone = timed(lambda: [g() for _ in range(reps)])
            t = timed(lambda: beside(lambda: p_update(st, S), g, reps, side))
            row = dict(gemm=name, reps=reps, S=S, gemm_us=round(alone, 1), update_us=res['update'][f'S{S}-w32-b8192']['us'],
                       both_us=round(t, 1), serial_us=round(full + lib_alone, 1), saved_us=round(full + lib_alone - t, 1))
            res['rows'].append(row); print(row, flush=True)
        save()

if __name__ == '__main__': smoke() if '--cpu-smoke' in sys.argv else coreside() if '--coreside' in sys.argv else main()
