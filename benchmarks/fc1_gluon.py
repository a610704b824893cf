"""fc1 (gate/up GEMM + SwiGLU) by the warp-specialised Gluon kernel (`experts._fc1_ws_kernel`, `03_experts`) against the
Triton `_fc1`, at the end-to-end shapes: checks, interleaved rounds.

This script held the kernel's prototype (commit 2dd2043 and before; first run on the GPU 2026-11-29: bit-identical,
`small` 578.7 → 499.5 µs, Qwen3 1571.2 → 1395.8); now it drives the library's kernel, setting `experts._WS_FC1_CFG`
per configuration. A consumer's tile is 128 rows × BH columns of h: its weight slot holds the BH gate columns and the
matching up columns side by side (two TMA loads), so one 128 × 2·BH accumulator holds both; the epilogue splits it in
registers and stores h, g and u while the other consumer multiplies. Gluon does not run in the interpreter:
`--compile-only` compiles each configuration for sm90 on a CPU, `--debug` runs small cases first, each in its own process.

    python3 benchmarks/fc1_gluon.py --compile-only            # CPU: compile for sm90 (shared memory, registers)
    PYTHONPATH=$PWD python3 benchmarks/fc1_gluon.py --debug   # GPU: small cases first, each in its own process
    PYTHONPATH=$PWD python3 benchmarks/fc1_gluon.py           # GPU: against `_fc1`, interleaved rounds; $OUT/fc1_gluon.json
"""
import os, sys, json, datetime
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch
from pithtrain import experts as X

CFGS = ((64, 64, 4, 3), (64, 64, 6, 1), (64, 64, 5, 1), (64, 32, 10, 1))   # (BH, BK, slots, output buffers a consumer); rows per tile: experts._WS_CFG[0]

def launch(a, offs, w1, h, gu, rw=None, table=None, cfg=CFGS[0]):
    "h, gu = fc1 of the plan rows a (N, H) with w1 (E, H, 2I) (gate | up), at this configuration."
    X._WS_FC1_CFG = cfg
    return X._fc1_ws(a, offs, w1, h, gu, rw, table)

def reference(a, offs, w1, rw):
    "`_fc1`'s outputs (the library's Triton kernel, `_WS` off)."
    N, (E, K, I2) = a.shape[0], w1.shape
    h, gu = torch.empty(N, I2 // 2, device=a.device, dtype=a.dtype), torch.empty(N, I2, device=a.device, dtype=a.dtype)
    was, X._WS = X._WS, '0'
    try: X._launch(X._fc1, a, None, offs, w1, None, h, gu, K, I2 // 2, I2 // 2, w1.stride(2), w1.stride(1), 1, rw=rw)
    finally: X._WS = was
    return h, gu

def compile_only():
    "Compile every configuration for sm90 on this machine: shared memory, registers and spills (ptxas -v)."
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from experts_sweep import bf16_desc as ds, sm90_report
    BM = X._WS_CFG[0]
    for BH, BK, S, NB in CFGS:
        for roww in (False, True):
            sig = dict(a_d=ds([BM, BK]), w_d=ds([BK, BH]), h_d=ds([BM, BH]), g_d=ds([BM, BH]), u_d=ds([BM, BH]), h='*bf16',
                       gu='*bf16', rw='*fp32', table='*i32', K='i32', I='i32', NPROG='i32', ROWW='constexpr', BM='constexpr',
                       BH='constexpr', BK='constexpr', S='constexpr', NB='constexpr')
            sm90_report(X._fc1_ws_kernel, sig, dict(ROWW=roww, BM=BM, BH=BH, BK=BK, S=S, NB=NB), (BH, BK, S, NB), 'ROWW', roww)

def case(name):
    "One debugging case in its own process: `tiny` (experts of 0, 1, 200, 130, 33 rows) or `small` (the e2e shape)."
    torch.manual_seed(0)
    if name.startswith('tiny'):
        rows, K, I = [0, 1, 200, 130, 33], 128, 128
        offs = torch.tensor([0] + rows, device='cuda').cumsum(0).to(torch.int32)
    else:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from experts_sweep import routing
        plan, offs = routing(16384, 8, 64); K, I = 1024, 512
    N, E = int(offs[-1]), offs.numel() - 1
    a = torch.randn(N, K, device='cuda', dtype=torch.bfloat16)
    w1 = (torch.randn(E, K, 2 * I, device='cuda') / K**0.5).bfloat16()
    rw = torch.rand(N, device='cuda') if name.endswith('rw') else None
    hr, gr = reference(a, offs, w1, rw)
    h, gu = torch.full_like(hr, float('nan')), torch.full_like(gr, float('nan'))
    launch(a, offs, w1, h, gu, rw); torch.cuda.synchronize()
    rel = lambda x, y: ((x.float() - y.float()).norm() / y.float().norm()).item()
    print(name, 'h rel err', rel(h, hr), 'gu rel err', rel(gu, gr), 'nan', h.isnan().sum().item(), gu.isnan().sum().item())

def debug():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from experts_sweep import isolated_cases
    isolated_cases(__file__, ('tiny', 'tiny-rw', 'small', 'small-rw'), tail=800)

def main(rounds=5):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from experts_sweep import routing, SHAPES, interleaved_rows
    res = dict(date=datetime.date.today().isoformat(), device=torch.cuda.get_device_name(),
               command='python3 benchmarks/fc1_gluon.py ' + ' '.join(sys.argv[1:]), rows=[])
    out = os.environ.get('OUT')
    rel = lambda x, y: ((x.float() - y.float()).norm() / y.float().norm()).item()
    for sname, (T, k, E, H, I) in SHAPES.items():
        plan, offs = routing(T, k, E)
        N = plan.token_idx.numel()
        a, w1, rw = torch.randn(N, H, device='cuda', dtype=torch.bfloat16), (torch.randn(E, H, 2 * I, device='cuda') * 0.02).bfloat16(), torch.rand(N, device='cuda')
        hr, gr = reference(a, offs, w1, rw)
        table = X._tile_table(offs, N, X._WS_CFG[0])
        fns = {'_fc1': lambda: reference(a, offs, w1, rw)}
        for cfg in CFGS:
            h, gu = torch.full_like(hr, float('nan')), torch.full_like(gr, float('nan'))
            launch(a, offs, w1, h, gu, rw, table, cfg); torch.cuda.synchronize()
            res['rows'].append(dict(shape=sname, cfg=cfg, err_h=rel(h, hr), err_gu=rel(gu, gr))); print(res['rows'][-1], flush=True)
            fns[f'gluon {cfg}'] = lambda cfg=cfg, h=h, gu=gu: launch(a, offs, w1, h, gu, rw, table, cfg)
        res['rows'] += interleaved_rows(fns, rounds, rep=30, flop=4 * N * H * I, shape=sname)
        if out: json.dump(res, open(os.path.join(out, 'fc1_gluon.json'), 'w'), indent=1)

if __name__ == '__main__':
    if '--compile-only' in sys.argv: compile_only()
    elif '--case' in sys.argv: case(sys.argv[sys.argv.index('--case') + 1])
    elif '--debug' in sys.argv: debug()
    else: main()
