"""Tile sweep of pithtrain's expert kernels, one launch at a time, at the end-to-end shapes (16384 tokens, k 8).

For each autotuned kernel of the TMA path (`_fc1` gate/up + SwiGLU, `_pmm` the persistent plain products fc2, dx
and dh, `_wg` the weight gradients) it times every (BM, BN, BK, warps, stages) given below plus the autotune set,
with the TMA (tensor-descriptor) loads on — fc1 each with its whole output tiles stored by pointers and by TMA
(`ts` false / true: `PITHTRAIN_TMA_STORE`) — and prints µs, TFLOP/s and the error against the first config; the
autotuned row names the config it picked. Use it to choose the autotune sets in `nbs/03_experts.ipynb` (`_SHAPES`).

    PYTHONPATH=$PWD python3 benchmarks/experts_sweep.py [--fc1] [--pmm] [--wg]   # GPU (all, or the kernels named); $OUT/experts_sweep.json
    PYTHONPATH=$PWD python3 benchmarks/experts_sweep.py --dh # SwiGLU backward: fused epilogue vs GEMM + elementwise pass;
                                                             # prints the faster as `PITHTRAIN_DH_SPLIT=0|1` (last line)
"""
import os, sys, json, datetime, statistics
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch
from triton.testing import do_bench
from pithtrain import experts as X
from pithtrain.dispatch import make_plan

EXTRA = {'_fc1': [(128, 128, 64, 8, 2), (128, 128, 32, 8, 5)],
         '_pmm': [(128, 256, 64, 8, 2), (256, 128, 64, 8, 2), (128, 128, 64, 8, 4), (128, 256, 32, 8, 4), (128, 128, 64, 4, 3)],
         '_wg': [(128, 128, 32, 8, 4, False), (128, 256, 32, 8, 4, False), (128, 128, 32, 8, 6, False), (256, 128, 32, 8, 4, False),
                 (128, 256, 32, 8, 3, False),
                 # two programs per SM (≤ 113 KB of shared memory each: one stores while the other computes), the
                 # likely reason 128×128×32×4×4 (64 KB) wins today; not yet run (NOTES-experts round 8)
                 (128, 128, 32, 4, 3, False), (128, 128, 32, 4, 5, False), (128, 128, 64, 4, 2, False), (128, 128, 64, 4, 3, False)]}

SHAPES = {'qwen3': (16384, 8, 128, 2048, 768), 'small': (16384, 8, 64, 1024, 512)}   # name: (T, k, E, H, I)
LAYERS = {'qwen3': 6, 'small': 8}   # layers of the e2e preset

def routing(T, k, E, dev='cuda'):
    "A balanced-ish plan (k distinct random experts per token) and its int32 offsets."
    torch.manual_seed(0)
    plan = make_plan(torch.stack([torch.randperm(E, device=dev)[:k] for _ in range(T)]), E)
    return plan, plan.offsets.to(torch.int32)

def plain_products(T, k, E, H, I, dev='cuda'):
    """`routing`'s plan at one shape and the three plain products' operands in bf16: (offsets, N, rows) with rows
    (name, a, w, K, NO, tw) for fc2 (h @ w2[e]), dx (dgu @ w1[e]ᵀ) and dh (dy @ w2[e]ᵀ)."""
    plan, offs = routing(T, k, E, dev)
    N, bf = plan.token_idx.numel(), torch.bfloat16
    h, dgu, dy = (torch.randn(N, n, device=dev, dtype=bf) for n in (I, 2 * I, H))
    w1, w2 = torch.randn(E, H, 2 * I, device=dev, dtype=bf) * 0.02, torch.randn(E, I, H, device=dev, dtype=bf) * 0.02
    return offs, N, (('fc2', h, w2, I, H, False), ('dx', dgu, w1, 2 * I, H, True), ('dh', dy, w2, H, I, True))

def interleaved(fns:dict, rounds:int, rep:int=40)->dict:
    """µs per call of each function, timed in turn for `rounds` rounds (a `do_bench` median each): {name: [µs a round]}.
    Kernel A/Bs go in rounds: in a sweep the same kernel read slower as the last row than as the first."""
    ts = {n: [] for n in fns}
    for _ in range(rounds):
        for n, f in fns.items(): ts[n].append(do_bench(f, warmup=5, rep=rep, return_mode='median') * 1e3)
    return ts

def interleaved_rows(fns:dict, rounds:int, rep:int=40, flop:float|None=None, **keys)->list:
    """`interleaved`'s rounds as result rows, each printed: `keys`, kernel, us_median (the median round), tflops (when the
    FLOPs of one call, `flop`, are given) and us (every round)."""
    rows = []
    for n, us in interleaved(fns, rounds, rep).items():
        md = statistics.median(us)
        r = dict(keys, kernel=n, us_median=round(md, 1))
        if flop is not None: r['tflops'] = round(flop / md / 1e6, 1)
        rows.append(dict(r, us=[round(t, 1) for t in us])); print(rows[-1], flush=True)
    return rows

def bf16_desc(shape)->str:
    "The signature type of a bf16 tensor descriptor for `shape` with its default NVMMA layout (for `sm90_report`)."
    from triton.experimental.gluon import language as gl
    return f'tensordesc<bf16[{shape[0]},{shape[1]}],{gl.NVMMASharedLayout.get_default_for(list(shape), gl.bfloat16)!r}>'

def sm90_report(kern, sig:dict, constexprs:dict, *label):
    """Compile the Gluon kernel `kern` for sm90 on this machine (no GPU needed) and print `label`, its shared memory, and
    the registers and spill-store bytes `ptxas -v` reports — or the failure's last 1500 characters."""
    import re, subprocess, glob, tempfile, triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    ptxas = glob.glob(os.path.join(os.path.dirname(triton.__file__), 'backends/nvidia/bin/ptxas'))[0]
    try:
        ck = triton.compile(GluonASTSource(kern, sig, constexprs), target=GPUTarget('cuda', 90, 32),
                            options=dict(num_warps=4, maxnreg=168))
        with tempfile.TemporaryDirectory() as d:
            open(f'{d}/k.ptx', 'w').write(ck.asm['ptx'])
            o = subprocess.run([ptxas, '-arch=sm_90a', '-v', f'{d}/k.ptx', '-o', f'{d}/k.cubin'], capture_output=True, text=True).stderr
        print(*label, 'smem', ck.metadata.shared, 'regs', re.findall(r'Used (\d+) registers', o),
              'spill', re.findall(r'(\d+) bytes spill stores', o), flush=True)
    except Exception as ex: print(*label, 'FAILED', str(ex)[-1500:], flush=True)

def isolated_cases(script:str, names, timeout:int=90, tail:int=600, tail_err:int|None=None):
    """Run `script --case NAME` for each name in a process of its own (CUDA_LAUNCH_BLOCKING=1: a failed launch poisons
    only its own CUDA context) and print each one's exit code and the end of its output; a timeout reads as a hang."""
    import subprocess
    env = dict(os.environ, CUDA_LAUNCH_BLOCKING='1')
    for name in names:
        try:
            r = subprocess.run([sys.executable, os.path.abspath(script), '--case', name], capture_output=True, text=True,
                               timeout=timeout, env=env)
            print(f'== {name}: rc {r.returncode}', r.stdout[-tail:], r.stderr[-(tail_err or tail):], flush=True)
        except subprocess.TimeoutExpired: print(f'== {name}: TIMEOUT (a hang: barriers)', flush=True)

def dh_split():
    "Time `_dgu` both ways (autotuned) at both shapes; print the summed winner."
    dev, bf = 'cuda', torch.bfloat16
    tot, rows = {True: 0.0, False: 0.0}, []
    for sname, (T, k, E, H, I) in SHAPES.items():
        plan, offs = routing(T, k, E)
        N = plan.token_idx.numel()
        gu, dy = torch.randn(N, 2 * I, device=dev, dtype=bf), torch.randn(N, H, device=dev, dtype=bf) * 0.1
        w2 = torch.randn(E, I, H, device=dev, dtype=bf) * 0.02
        outs = {}
        for split in (False, True):
            X._DH_SPLIT = split
            fn = lambda: X._dgu(dy, offs, w2, gu, False, False, 1.0, 0.0)[0]
            outs[split] = fn().float(); torch.cuda.synchronize()
            t = do_bench(fn, warmup=5, rep=40, return_mode='median') * 1e3
            tot[split] += t * LAYERS[sname]
            rows.append(dict(shape=sname, split=split, us=round(t, 1))); print(rows[-1], flush=True)
        print(sname, 'rel. difference split vs fused', ((outs[True] - outs[False]).norm() / outs[False].norm()).item(), flush=True)
    print(f"PITHTRAIN_DH_SPLIT={int(tot[True] < tot[False])}")

def main():
    only = [n for n in ('_fc1', '_pmm', '_wg') if f'--{n[1:]}' in sys.argv]   # e.g. --fc1: that kernel only
    store = X._TMA_STORE   # the process's setting, put back after each kernel's sweep
    dev, bf = 'cuda', torch.bfloat16
    res = dict(date=datetime.date.today().isoformat(), device=torch.cuda.get_device_name(),
               command='python3 benchmarks/experts_sweep.py ' + ' '.join(sys.argv[1:]), rows=[])
    for sname, (T, k, E, H, I) in SHAPES.items():
        plan, offs = routing(T, k, E)
        N = plan.token_idx.numel()
        xg = torch.randn(T, H, device=dev, dtype=bf)[plan.token_idx].contiguous()
        gu, dgu = torch.randn(N, 2 * I, device=dev, dtype=bf), torch.randn(N, 2 * I, device=dev, dtype=bf) * 0.1
        h, dy = torch.randn(N, I, device=dev, dtype=bf), torch.randn(N, H, device=dev, dtype=bf) * 0.1
        w1 = torch.randn(E, H, 2 * I, device=dev, dtype=bf) * 0.02
        w2 = torch.randn(E, I, H, device=dev, dtype=bf) * 0.02
        dw1, dw2 = torch.empty(E, H, 2 * I, device=dev), torch.empty(E, I, H, device=dev)
        f1, f2 = 2 * N * H * 2 * I, 2 * N * I * H
        nh, ngu, ny = torch.empty(N, I, device=dev, dtype=bf), torch.empty_like(gu), torch.empty(N, H, device=dev, dtype=bf)
        calls = {'_fc1': [('fc1', lambda: X._launch(X._fc1, xg, None, offs, w1, None, nh, ngu, H, I, I, w1.stride(2), w1.stride(1), 1) is None or nh, f1)],
                 '_pmm': [('fc2', lambda: X._launch(X._mm, h, None, offs, w2, None, ny, None, I, H, I, w2.stride(2), w2.stride(1), 0), f2),
                          ('dx', lambda: X._launch(X._mm, dgu, None, offs, w1, None, ny, None, 2 * I, H, I, w1.stride(1), w1.stride(2), 0), f1),
                          ('dh', lambda: X._launch(X._mm, dy, None, offs, w2, None, nh, None, H, I, I, w2.stride(1), w2.stride(2), 0), f2)],
                 '_wg': [('dW1', lambda: X._wgrad(xg, None, dgu, offs, dw1, None), f1), ('dW2', lambda: X._wgrad(h, None, dy, offs, dw2, None), f2)]}
        for name, tuned in [(n, getattr(X, n)) for n in calls if not only or n in only]:
            refs = {}
            modes = (False, True) if name == '_fc1' else (store,)   # only fc1 has TMA stores
            for shape, ts in [(s, ts) for s in list(X._SHAPES[name]) + EXTRA[name] for ts in modes] + [('autotune', True)]:
                X._TMA_STORE = ts
                setattr(X, name, tuned if shape == 'autotune' else X._tuned(tuned.fn, X._cfgs(shape), tuned.keys))
                for what, fn, flop in calls[name]:
                    try:
                        for buf in (nh, ngu, ny, dw1, dw2): buf.fill_(float('nan'))   # an unwritten element shows as NaN
                        out = fn().float().clone(); torch.cuda.synchronize()
                        t = do_bench(fn, warmup=5, rep=40, return_mode='median') * 1e3
                        ref = refs.setdefault(what, out)
                        row = dict(shape=sname, kernel=what, cfg=shape, ts=ts, us=round(t, 1), tflops=round(flop / t / 1e6, 1),
                                   rel_err=((out - ref).norm() / ref.norm()).item())
                    except Exception as ex: row = dict(shape=sname, kernel=what, cfg=shape, ts=ts, error=repr(ex)[:200])
                    if shape == 'autotune' and 'us' in row: row['picked'] = str(getattr(X, name).best_config)
                    res['rows'].append(row); print(row, flush=True)
            setattr(X, name, tuned); X._TMA_STORE = store
    out = os.environ.get('OUT')
    if out: json.dump(res, open(os.path.join(out, 'experts_sweep.json'), 'w'), indent=1)

if __name__ == '__main__': dh_split() if '--dh' in sys.argv else main()
