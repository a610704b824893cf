"""dh = dy @ w2[e]ᵀ with the SwiGLU backward in its epilogue, by the warp-specialised Gluon kernel
(`experts._dh_ws_kernel`, `03_experts`), against the split path it replaces on Hopper (the Gluon plain product for dh, then
`_act_bwd_kernel`: dh written and read back, 1.27 ms of the graphed `small` step), at the end-to-end shapes, with the
routing weights folded in and their gradient asked for (the e2e case): checks and interleaved rounds.

    python3 benchmarks/dh_gluon.py --compile-only            # CPU: compile for sm90 (shared memory, registers, spills)
    PYTHONPATH=$PWD python3 benchmarks/dh_gluon.py --debug   # GPU: small cases first, each in its own process
    PYTHONPATH=$PWD python3 benchmarks/dh_gluon.py           # GPU: interleaved rounds; $OUT/dh_gluon.json
"""
import os, sys, json, datetime, statistics
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch, triton
from pithtrain import experts as X

CFGS = ((64, 64, 6), (64, 64, 5), (64, 32, 10))   # (BN, BK, slots); rows per tile: experts._WS_CFG[0]

def operands(T, k, E, H, I, seed=0):
    "A plan's offsets and bf16 dy (N, H), w2 (E, I, H), gu (N, 2I), fp32 row weights (N,)."
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from experts_sweep import routing
    plan, offs = routing(T, k, E)
    N = plan.token_idx.numel()
    g = torch.Generator(device='cuda').manual_seed(seed)
    r = lambda *s: torch.randn(*s, device='cuda', generator=g)
    return offs, r(N, H).bfloat16(), (r(E, I, H) / H**0.5).bfloat16(), (2 * r(N, 2 * I)).bfloat16(), torch.rand(N, device='cuda', generator=g)

def split(dy, offs, w2, gu, rw, table, ws=True):
    "`_dgu` as the library runs it without the fused kernel (`PITHTRAIN_WS_DH=0`): dh by a plain product (the Gluon one with"
    " ws, else `_pmm`), then `_act_bwd_kernel`."
    was = X._WS, X._WS_DH
    X._WS, X._WS_DH = ('always' if ws else '0'), False
    try: return X._dgu(dy, offs, w2, gu, False, False, 1.0, 0.0, rw, True, table)
    finally: X._WS, X._WS_DH = was

def fused(dy, offs, w2, gu, rw, table, cfg=CFGS[0]):
    X._WS_DH_CFG = cfg
    return X._dgu_ws(dy, offs, w2, gu, torch.empty_like(gu), rw, True, table)

def rel(x, y): return ((x.double() - y.double()).norm() / y.double().norm()).item()

def compile_only():
    import re, subprocess, glob
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.experimental.gluon import language as gl
    ptxas = glob.glob(os.path.join(os.path.dirname(triton.__file__), 'backends/nvidia/bin/ptxas'))[0]
    lay = lambda shape: gl.NVMMASharedLayout.get_default_for(shape, gl.bfloat16)
    d = lambda shape: f'tensordesc<bf16[{shape[0]},{shape[1]}],{lay(shape)!r}>'
    BM = X._WS_CFG[0]
    for BN, BK, S in CFGS:
        for roww in (False, True):
            sig = dict(a_d=d([BM, BK]), w_d=d([BN, BK]), g_d=d([BM, BN]), u_d=d([BM, BN]), dg_d=d([BM, BN]), du_d=d([BM, BN]),
                       dgu='*bf16', rw='*fp32', drw='*fp32', table='*i32', K='i32', I='i32', NR='i32', NPROG='i32', ROWW='constexpr',
                       DW='constexpr', BM='constexpr', BN='constexpr', BK='constexpr', S='constexpr')
            try:
                ck = triton.compile(GluonASTSource(X._dh_ws_kernel, sig, dict(ROWW=roww, DW=roww, BM=BM, BN=BN, BK=BK, S=S)),
                                    target=GPUTarget('cuda', 90, 32), options=dict(num_warps=4, maxnreg=168))
                open('/tmp/dh_ws.ptx', 'w').write(ck.asm['ptx'])
                o = subprocess.run([ptxas, '-arch=sm_90a', '-v', '/tmp/dh_ws.ptx', '-o', '/tmp/dh_ws.cubin'], capture_output=True, text=True).stderr
                print((BN, BK, S), 'ROWW+DW', roww, 'smem', ck.metadata.shared, 'regs', re.findall(r'Used (\d+) registers', o),
                      'spill', re.findall(r'(\d+) bytes spill stores', o), flush=True)
            except Exception as ex: print((BN, BK, S), 'FAILED', str(ex)[-1500:], flush=True)

def case(name):
    "One debugging case in its own process: `tiny` (experts of 0, 1, 200, 130, 33 rows; I 96) or `small` (the e2e shape)."
    if name.startswith('tiny'):
        rows, H, I = [0, 1, 200, 130, 33], 128, 96
        offs = torch.tensor([0] + rows, device='cuda').cumsum(0).to(torch.int32)
        g = torch.Generator(device='cuda').manual_seed(0)
        N, E = sum(rows), len(rows)
        dy, w2 = torch.randn(N, H, device='cuda', generator=g).bfloat16(), (torch.randn(E, I, H, device='cuda', generator=g) / H**0.5).bfloat16()
        gu, rw = (2 * torch.randn(N, 2 * I, device='cuda', generator=g)).bfloat16(), torch.rand(N, device='cuda', generator=g)
    else: offs, dy, w2, gu, rw = operands(16384, 8, 64, 1024, 512)
    rw = rw if name.endswith('rw') else None
    table = X._tile_table(offs, dy.shape[0], X._WS_CFG[0])
    ref, drw_ref = split(dy, offs, w2, gu, rw, table, ws=False)
    X._WS_DH_CFG = CFGS[0]
    out, drw = X._dgu_ws(dy, offs, w2, gu, torch.full_like(gu, float('nan')), rw, True, table)
    torch.cuda.synchronize()
    print(name, 'dgu rel err', rel(out, ref), 'nan', out.isnan().sum().item(), 'drw rel err', rel(drw, drw_ref))

def debug():
    import subprocess
    env = dict(os.environ, CUDA_LAUNCH_BLOCKING='1')
    for name in ('tiny', 'tiny-rw', 'small', 'small-rw'):
        try:
            r = subprocess.run([sys.executable, os.path.abspath(__file__), '--case', name], capture_output=True, text=True, timeout=90, env=env)
            print(f'== {name}: rc {r.returncode}', r.stdout[-600:], r.stderr[-600:], flush=True)
        except subprocess.TimeoutExpired: print(f'== {name}: TIMEOUT (a hang: barriers)', flush=True)

def main(rounds=5):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from experts_sweep import SHAPES, interleaved
    res = dict(date=datetime.date.today().isoformat(), device=torch.cuda.get_device_name(),
               command='python3 benchmarks/dh_gluon.py ' + ' '.join(sys.argv[1:]), rows=[])
    out = os.environ.get('OUT')
    for sname, (T, k, E, H, I) in SHAPES.items():
        offs, dy, w2, gu, rw = operands(T, k, E, H, I)
        table = X._tile_table(offs, dy.shape[0], X._WS_CFG[0])
        ref, drw_ref = split(dy, offs, w2, gu, rw, table)
        fns = {'split (Gluon dh + _act_bwd)': lambda: split(dy, offs, w2, gu, rw, table)}
        for cfg in CFGS:
            o, drw = fused(dy, offs, w2, gu, rw, table, cfg); torch.cuda.synchronize()
            res['rows'].append(dict(shape=sname, cfg=cfg, err_dgu=rel(o, ref), err_drw=rel(drw, drw_ref))); print(res['rows'][-1], flush=True)
            fns[f'fused {cfg}'] = lambda cfg=cfg: fused(dy, offs, w2, gu, rw, table, cfg)
        ts = interleaved(fns, rounds, rep=30)
        for n in fns:
            md = statistics.median(ts[n])
            res['rows'].append(dict(shape=sname, kernel=n, us_median=round(md, 1), us=[round(t, 1) for t in ts[n]]))
            print(res['rows'][-1], flush=True)
        if out: json.dump(res, open(os.path.join(out, 'dh_gluon.json'), 'w'), indent=1)

if __name__ == '__main__':
    if '--compile-only' in sys.argv: compile_only()
    elif '--case' in sys.argv: case(sys.argv[sys.argv.index('--case') + 1])
    elif '--debug' in sys.argv: debug()
    else: main()
