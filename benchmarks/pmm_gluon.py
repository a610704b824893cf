"""The plain expert products (fc2, dx, dh) by the warp-specialised Gluon kernel (`experts._pmm_ws_kernel`, `03_experts`)
against the Triton persistent kernel `_pmm`, at the end-to-end shapes: tile configurations, checks, interleaved rounds.

This script held the kernel's prototype (commits 6ba2d56 … 5f2fdc0, with a one-consumer variant: at `_pmm`'s speed);
now it drives the library's kernel, setting `experts._WS_CFG` per configuration. Gluon does not run in the
interpreter: `--compile-only` compiles each configuration for sm90 on a CPU (shared memory, registers), `--debug`
runs small cases first, each in its own process (a failed launch poisons the CUDA context).

    PYTHONPATH=$PWD python3 benchmarks/pmm_gluon.py                 # GPU: against `_pmm`, interleaved rounds; $OUT/pmm_gluon.json
    PYTHONPATH=$PWD python3 benchmarks/pmm_gluon.py --debug         # GPU: tiny and `small` cases against a reference
    python3 benchmarks/pmm_gluon.py --compile-only                  # CPU
"""
import os, sys, json, datetime
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch
from pithtrain import experts as X

CFGS = ((128, 128, 64, 5, 1), (128, 128, 64, 6, 2), (128, 128, 64, 5, 2))   # (BM, BN, BK, slots, store chunks `_WS_CS`);
# measured before: (128, 128, 64, 4), (128, 128, 32, 8), (64, 256, 64, 4) slower than (128, 128, 64, 5)

def launch(a, offs, w, c, K, NO, tw, cfg, table=None):
    "c[rows of e] = a[rows of e] @ w[e] (w (E, K, NO)), or @ w[e]ᵀ with tw (w (E, NO, K)), at this configuration."
    X._WS_CFG, X._WS_CS = cfg[:4], (cfg[4] if len(cfg) > 4 else 1)
    return X._pmm_ws(a, offs, w, c, K, NO, tw, table)

def pmm(a, offs, w, c, K, NO, tw):
    "The same product by the Triton kernels (`_WS` off)."
    was, X._WS = X._WS, '0'
    try:
        swk, swn = (w.stride(2), w.stride(1)) if tw else (w.stride(1), w.stride(2))
        return X._launch(X._mm, a, None, offs, w, None, c, None, K, NO, NO, swn, swk, 0)
    finally: X._WS = was

def compile_only():
    "Compile every configuration for sm90 on this machine: shared memory, registers and spills (ptxas -v)."
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from experts_sweep import bf16_desc as d, sm90_report
    for (BM, BN, BK, S, CS) in CFGS:
        for tw in (False, True):
            sig = dict(a_d=d([BM, BK]), w_d=d([BN, BK] if tw else [BK, BN]), c_d=d([BM, BN // CS]), c='*bf16', table='*i32', K='i32',
                       NO='i32', sc_m='i32', NPROG='i32', TW='constexpr', BM='constexpr', BN='constexpr', BK='constexpr', S='constexpr',
                       CS='constexpr')
            sm90_report(X._pmm_ws_kernel, sig, dict(TW=tw, BM=BM, BN=BN, BK=BK, S=S, CS=CS), (BM, BN, BK, S, CS), 'tw', tw)

def main(rounds=4):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from experts_sweep import plain_products, SHAPES, interleaved_rows
    res = dict(date=datetime.date.today().isoformat(), device=torch.cuda.get_device_name(),
               command='python3 benchmarks/pmm_gluon.py ' + ' '.join(sys.argv[1:]), rows=[])
    bf, out = torch.bfloat16, os.environ.get('OUT')
    def save():
        if out: json.dump(res, open(os.path.join(out, 'pmm_gluon.json'), 'w'), indent=1)
    for sname, (T, k, E, H, I) in SHAPES.items():
        offs, N, prods = plain_products(T, k, E, H, I)
        for what, a, w, K, NO, tw in prods:
            flop = 2 * N * K * NO
            c = torch.empty(N, NO, device='cuda', dtype=bf)
            ref = pmm(a, offs, w, torch.empty_like(c), K, NO, tw).float()
            fns = {'_pmm': lambda: pmm(a, offs, w, c, K, NO, tw)}
            for cfg in CFGS:
                try:
                    table = X._tile_table(offs, N, cfg[0])
                    c.fill_(float('nan')); launch(a, offs, w, c, K, NO, tw, cfg, table); torch.cuda.synchronize()
                    err = ((c.float() - ref).norm() / ref.norm()).item()
                    res['rows'].append(dict(shape=sname, gemm=what, cfg=cfg, rel_err=err, nan=bool(c.isnan().any())))
                    print(res['rows'][-1], flush=True)
                    if err < 1e-2: fns[str(cfg)] = (lambda cfg, table: lambda: launch(a, offs, w, c, K, NO, tw, cfg, table))(cfg, table)
                except Exception as ex:
                    res['rows'].append(dict(shape=sname, gemm=what, cfg=cfg, error=repr(ex)[:400])); print(res['rows'][-1], flush=True)
                    raise
                save()
            res['rows'] += interleaved_rows(fns, rounds, rep=30, flop=flop, shape=sname, gemm=what)
            save()

def case(name):
    "One debugging case (run in its own process by `--debug`: a failed launch poisons the CUDA context)."
    torch.manual_seed(0)
    rows = [0, 1, 200, 130, 33]
    offs = torch.tensor([0] + list(torch.tensor(rows).cumsum(0)), dtype=torch.int32, device='cuda')
    N, K, NO, E = sum(rows), 128, 128, len(rows)
    if name == 'table':
        t = X._tile_table(offs, N, 128).tolist()
        print('table', t[0], [t[1 + 3 * j: 4 + 3 * j] for j in range(t[0])])
        return
    tw = 'tw' in name
    if name.startswith('small'):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from experts_sweep import routing
        plan, offs = routing(16384, 8, 64); N, K, NO, E = plan.token_idx.numel(), 512, 1024, 64
    a = torch.randn(N, K, device='cuda', dtype=torch.bfloat16)
    w = torch.randn(E, NO, K, device='cuda', dtype=torch.bfloat16) if tw else torch.randn(E, K, NO, device='cuda', dtype=torch.bfloat16)
    c = torch.full((N, NO), float('nan'), device='cuda', dtype=torch.bfloat16)
    launch(a, offs, w, c, K, NO, tw, X._WS_CFG + (X._WS_CS,)); torch.cuda.synchronize()
    o = offs.tolist()
    ref = torch.cat([a[o[e]:o[e + 1]].float() @ (w[e].float().T if tw else w[e].float()) for e in range(E)])
    print(name, 'rel err', ((c.float() - ref).norm() / ref.norm()).item(), 'nan', c.isnan().sum().item())

def debug():
    import shutil
    print('compute-sanitizer:', shutil.which('compute-sanitizer'), flush=True)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from experts_sweep import isolated_cases
    isolated_cases(__file__, ('table', 'tiny-notw', 'tiny-tw', 'small-notw', 'small-tw'), tail=1500, tail_err=1200)

if __name__ == '__main__':
    if '--compile-only' in sys.argv: compile_only()
    elif '--case' in sys.argv: case(sys.argv[sys.argv.index('--case') + 1])
    elif '--debug' in sys.argv: debug()
    else: main()
