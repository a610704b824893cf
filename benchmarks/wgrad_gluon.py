"""The expert weight gradients dw[e] = a[rows of e]ᵀ b[rows of e] by the warp-specialised Gluon kernel
(`experts._wgrad_ws_kernel`, `03_experts`) against the Triton `_wgrad` (autotuned), at the end-to-end shapes (dW1: a = the
gathered x (N, H), b = dgu (N, 2I); dW2: a = h (N, I), b = dy (N, H); fp32 master gradients with their tile sums of
squares, as the e2e step asks for them): checks and interleaved rounds.

    PYTHONPATH=$PWD python3 benchmarks/wgrad_gluon.py --debug   # GPU: small cases first, each in its own process
    PYTHONPATH=$PWD python3 benchmarks/wgrad_gluon.py           # GPU: interleaved rounds; $OUT/wgrad_gluon.json
    PYTHONPATH=$PWD python3 benchmarks/wgrad_gluon.py --real    # GPU: at a real step's routing; $OUT/wgrad_gluon-real.json
"""
import os, sys, json, datetime, statistics
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch
from pithtrain import experts as X

CFGS = ((128, 128, 64, 6), (128, 128, 64, 7), (128, 128, 32, 10))   # (BM, BN, BK, slots)

def triton_wgrad(a, b, offs, dw, sq):
    "The library's Triton kernel on the same operands (`PITHTRAIN_WS_WG` off)."
    was, X._WS_WG = X._WS_WG, False
    try: return X._wgrad(a, None, b, offs, dw, None, sq)
    finally: X._WS_WG = was

def gluon_wgrad(a, b, offs, dw, sq, cfg=CFGS[0]):
    X._WS_WG_CFG = cfg
    return X._wgrad_ws(a, b, offs, dw, sq)

def rel(x, y): return ((x.double() - y.double()).norm() / y.double().norm().clamp_min(1e-30)).item()

def case(name):
    "`tiny` (experts of 0, 1, 63, 64, 65, 200, 0, 1000 rows; KO 192, NO 136) or `small` (dW1 at the e2e shape); -bf16: dw in bf16."
    torch.manual_seed(0)
    if name.startswith('tiny'):
        rows, KO, NO = [0, 1, 63, 64, 65, 200, 0, 1000], 192, 136
        offs = torch.tensor([0] + rows, device='cuda').cumsum(0).to(torch.int32)
    else:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from experts_sweep import routing
        plan, offs = routing(16384, 8, 64); KO, NO = 1024, 1024
    N, E = int(offs[-1]), offs.numel() - 1
    a, b = torch.randn(N, KO, device='cuda').bfloat16(), torch.randn(N, NO, device='cuda').bfloat16()
    dt = torch.bfloat16 if name.endswith('bf16') else torch.float32
    ref = torch.empty(E, KO, NO, device="cuda", dtype=dt)
    ref_sq = X._sq_slots(ref)
    triton_wgrad(a, b, offs, ref, ref_sq)
    dw, sq = torch.full_like(ref, float('nan')), X._sq_slots(ref)
    gluon_wgrad(a, b, offs, dw, sq); torch.cuda.synchronize()
    o = offs.tolist()
    f32 = torch.stack([a[o[e]:o[e + 1]].float().T @ b[o[e]:o[e + 1]].float() for e in range(E)])
    print(name, 'vs _wgrad', rel(dw, ref), 'vs fp32', rel(dw, f32), 'nan', dw.isnan().sum().item(),
          'sq', sq.sum().item(), ref_sq.sum().item(), (dw.float() ** 2).sum().item())

def debug():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from experts_sweep import isolated_cases
    isolated_cases(__file__, ('tiny', 'tiny-bf16', 'small', 'small-bf16'), timeout=120)

def main(rounds=4):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from experts_sweep import routing, SHAPES, interleaved_rows
    res = dict(date=datetime.date.today().isoformat(), device=torch.cuda.get_device_name(),
               command='python3 benchmarks/wgrad_gluon.py ' + ' '.join(sys.argv[1:]), rows=[])
    out = os.environ.get('OUT')
    for sname, (T, k, E, H, I) in SHAPES.items():
        plan, offs = routing(T, k, E)
        N = plan.token_idx.numel()
        for gname, KO, NO in (('dW1', H, 2 * I), ('dW2', I, H)):
            a, b = torch.randn(N, KO, device='cuda').bfloat16(), torch.randn(N, NO, device='cuda').bfloat16()
            ref = torch.empty(E, KO, NO, device='cuda')
            rsq = X._sq_slots(ref)
            triton_wgrad(a, b, offs, ref, rsq)
            fns = {'_wgrad': lambda: triton_wgrad(a, b, offs, ref, rsq.zero_())}
            for cfg in CFGS:
                dw, sq = torch.empty_like(ref), X._sq_slots(ref)
                gluon_wgrad(a, b, offs, dw, sq, cfg); torch.cuda.synchronize()
                res['rows'].append(dict(shape=sname, grad=gname, cfg=cfg, err=rel(dw, ref), sq_err=abs(sq.sum().item() / rsq.sum().item() - 1)))
                print(res['rows'][-1], flush=True)
                fns[f'gluon {cfg}'] = lambda cfg=cfg, dw=dw, sq=sq: gluon_wgrad(a, b, offs, dw, sq.zero_(), cfg)
            res['rows'] += interleaved_rows(fns, rounds, rep=30, flop=2 * N * KO * NO, shape=sname, grad=gname)
            if out: json.dump(res, open(os.path.join(out, 'wgrad_gluon.json'), 'w'), indent=1)

DEALS = (('expert order', 0), ('expert order', 1), ('most rows first', 0), ('most rows first', 1), ('most rows first', 2))

def real(presets=('small', 'qwen3-30b-a3b-6l'), rounds=3):
    """At the routing of a real training step (the e2e bench's eager step, its third): every layer's two weight gradients,
    the Triton `_wgrad` against the Gluon kernel with its tiles in expert order or in `expert_order` (most rows first),
    their rounds dealt in turn (deal 0) or in alternate directions every `deal` rounds."""
    from pithtrain.bench import pithtrain_step, BATCH
    from pithtrain.qwen3_moe import Qwen3MoEConfig
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from experts_sweep import interleaved
    res = dict(date=datetime.date.today().isoformat(), device=torch.cuda.get_device_name(),
               command='python3 benchmarks/wgrad_gluon.py ' + ' '.join(sys.argv[1:]), rows=[])
    out, orig = os.environ.get('OUT'), X._wgrad
    for p in presets:
        c = Qwen3MoEConfig.preset(p); B, S = BATCH[p]
        model, opt, step = pithtrain_step(c, B, S, torch.device('cuda'))
        calls = []
        def rec(a, tok, b, offs, dw, db, sq=None):
            if tok is None and db is None: calls.append((a.clone(), b.clone(), offs.clone(), dw.shape, dw.dtype))
            return orig(a, tok, b, offs, dw, db, sq)
        for i in range(3):
            X._wgrad = rec if i == 2 else orig
            step()
        X._wgrad = orig
        del model, opt, step; torch.cuda.empty_cache()
        tot = {}
        for i, (a, b, offs, shape, dt) in enumerate(calls):
            rows = offs.diff().float()
            dw = torch.empty(shape, device='cuda', dtype=dt)
            sq = X._sq_slots(dw)
            ref, rsq = torch.empty_like(dw), torch.zeros_like(sq)
            triton_wgrad(a, b, offs, ref, rsq)
            nat = torch.arange(shape[0], device='cuda', dtype=torch.int32)
            fns = {'_wgrad': lambda: triton_wgrad(a, b, offs, ref, rsq.zero_())}
            for oname, deal in DEALS:   # the tiles in plain expert order or most rows first, rounds dealt snaking every `deal`
                fns[f'gluon {oname} deal {deal}'] = lambda o=nat if oname == 'expert order' else None, d=deal: \
                    X._wgrad_ws(a, b, offs, dw, sq.zero_(), order=o, deal=d)
            X._wgrad_ws(a, b, offs, dw, sq.zero_()); torch.cuda.synchronize()
            ts = {n: statistics.median(v) for n, v in interleaved(fns, rounds, rep=30).items()}
            for n, v in ts.items(): tot[n] = tot.get(n, 0.0) + v
            r = dict(preset=p, call=i, shape=list(shape), rows_max_over_mean=round((rows.max() / rows.mean()).item(), 3),
                     rows_cv=round((rows.std() / rows.mean()).item(), 3), err=rel(dw, ref),
                     us={n: round(v, 1) for n, v in ts.items()})
            res['rows'].append(r); print(r, flush=True)
        res['rows'].append(dict(preset=p, calls=len(calls), total_us={n: round(v, 1) for n, v in tot.items()}))
        print(res['rows'][-1], flush=True)
        calls.clear(); torch.cuda.empty_cache()   # this preset's recorded operands, before the next one's step
        if out: json.dump(res, open(os.path.join(out, 'wgrad_gluon-real.json'), 'w'), indent=1)

if __name__ == '__main__':
    if '--real' in sys.argv: real()
    elif '--case' in sys.argv: case(sys.argv[sys.argv.index('--case') + 1])
    elif '--debug' in sys.argv: debug()
    else: main()
