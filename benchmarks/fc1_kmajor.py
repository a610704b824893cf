"""fc1 (gate/up GEMM + SwiGLU epilogue) and dx with w1 stored (E, H, 2I) against K-major (E, 2I, H), at the e2e step shapes.

K-major w1 lets `_gmm_kernel` load a tile's gate and up rows as one (2, BN, BK) box and run one 2·BN-wide dot
instead of two BN-wide ones (the A tile is read from shared memory once per K step instead of twice).

    python3 benchmarks/fc1_kmajor.py     # GPU: prints a table, writes $OUT/fc1_kmajor.json
"""
import os, sys, json, time
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch, triton
from pithtrain.experts import _launch, _fc1, _mm
from pithtrain.core import rel_err

SHAPES = {'small': (16384, 8, 64, 1024, 512), 'qwen3-30b-a3b-6l': (16384, 8, 128, 2048, 768)}   # T, k, E, H, I
dev = torch.device('cuda'); torch.manual_seed(0)
rows = []
for name, (T, k, E, H, I) in SHAPES.items():
    N = T * k
    cnt = torch.multinomial(torch.ones(E), N, replacement=True).bincount(minlength=E)   # uniform random routing
    offs = torch.zeros(E + 1, dtype=torch.int32); offs[1:] = cnt.cumsum(0)
    offs = offs.to(dev)
    xa = torch.randn(N, H, device=dev, dtype=torch.bfloat16)
    rw = torch.rand(N, device=dev)
    w1 = (torch.randn(E, H, 2 * I, device=dev) * H ** -0.5).to(torch.bfloat16)
    w1k = w1.transpose(1, 2).contiguous()          # (E, 2I, H): w1k.transpose(1, 2) is w1
    dgu = torch.randn(N, 2 * I, device=dev, dtype=torch.bfloat16)
    def fc1(w, swn, swk):
        h, gu = torch.empty(N, I, device=dev, dtype=torch.bfloat16), torch.empty(N, 2 * I, device=dev, dtype=torch.bfloat16)
        return lambda: _launch(_fc1, xa, None, offs, w, None, h, gu, H, I, I, swn, swk, 1, rw=rw), h, gu
    def dx(w, swn, swk):
        out = torch.empty(N, H, device=dev, dtype=torch.bfloat16)
        return lambda: _launch(_mm, dgu, None, offs, w, None, out, None, 2 * I, H, I, swn, swk, 0), out
    (fs, hs, gus), (fk, hk, guk) = fc1(w1, 1, 2 * I), fc1(w1k, H, 1)
    (ds, os_), (dk, ok) = dx(w1, 2 * I, 1), dx(w1k, 1, H)
    for f in (fs, fk, ds, dk): f()
    torch.cuda.synchronize()
    fl = 2 * N * H * 2 * I
    r = dict(shape=name, N=N, E=E, H=H, I=I, fc1_h_relerr=rel_err(hk, hs), fc1_gu_relerr=rel_err(guk, gus), dx_relerr=rel_err(ok, os_))
    for key, f in (('fc1_std', fs), ('fc1_kmajor', fk), ('dx_std', ds), ('dx_kmajor', dk)):
        ms = triton.testing.do_bench(f, warmup=25, rep=200)
        r[key + '_us'] = ms * 1e3; r[key + '_tflops'] = fl / ms / 1e9
    rows.append(r)
    print(f"{name:18s} fc1 {r['fc1_std_us']:7.1f} -> {r['fc1_kmajor_us']:7.1f} us ({r['fc1_std_tflops']:.0f} -> {r['fc1_kmajor_tflops']:.0f} TFLOP/s)  "
          f"dx {r['dx_std_us']:7.1f} -> {r['dx_kmajor_us']:7.1f} us  relerr h {r['fc1_h_relerr']:.1e} gu {r['fc1_gu_relerr']:.1e} dx {r['dx_relerr']:.1e}", flush=True)
res = dict(date=time.strftime('%Y-%m-%d'), device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
           command='python3 benchmarks/fc1_kmajor.py', rows=rows)
out = os.environ.get('OUT')
if out: json.dump(res, open(os.path.join(out, 'fc1_kmajor.json'), 'w'), indent=1)
