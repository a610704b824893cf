"""Prototype, measured and dropped (`NOTES-experts.md` round 14): AdamW inside the expert weight-gradient kernel. The
library code it needs is `benchmarks/fused_adamw.patch` (`git apply benchmarks/fused_adamw.patch` on the commit that
added it: `_wgrad_ws_kernel` with ADAM — a second loading warp fills a ring with the tile's moments and master weight by
TMA, each consumer stages its fp32 tile in shared memory and updates it in a loop of 16-column chunks, the consumers
taking turns; `optim.AdamW.fuse_into_backward` / `begin_step` / `FusedAdamW`; no clipping). This script times it
against the unfused pair it replaces — the Gluon weight gradient into an fp32 gradient, then the AdamW pass over it
(`FusedAdamW.apply`, the optimizer's `_adamw_kernel`) — after checking them equal bit for bit (p, moments, compute copy,
Σ dW² slots; a tile with a NaN gradient left as it was; nothing written with `on` = 0), at the end-to-end shapes
(dW1: a = gathered x (N, H), b = dgu (N, 2I); dW2: a = h (N, I), b = dy (N, H)).

    PYTHONPATH=$PWD python3 benchmarks/wgrad_adam.py            # GPU, patch applied: checks + rounds; $OUT/wgrad_adam.json
    PYTHONPATH=$PWD python3 benchmarks/wgrad_adam.py --check    # GPU, patch applied: the checks only
"""
import os, sys, json, datetime
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
from pithtrain import experts as X
from pithtrain.optim import FusedAdamW

def state(E, KO, NO, seed=0):
    "A master weight, its moments and compute copy, and a FusedAdamW with step-3 numbers (lr 1e-3, wd 0.1)."
    g = torch.Generator(device='cuda').manual_seed(seed)
    p = torch.randn(E, KO, NO, device='cuda', generator=g) * 0.02
    m = torch.randn(E, KO, NO, device='cuda', generator=g) * 1e-3
    v = torch.rand(E, KO, NO, device='cuda', generator=g) * 1e-5
    c = p.bfloat16()
    lr, wd, b1, b2, t = 1e-3, 0.1, 0.9, 0.95, 3
    hp = torch.tensor([1 - lr * wd, lr / (1 - b1 ** t), (1 - b2 ** t) ** 0.5, 1.0], device='cuda')
    return p, FusedAdamW(m, v, c, hp, b1, b2, 1e-8)

def clone(p, h): return p.clone(), FusedAdamW(h.m.clone(), h.v.clone(), h.copy.clone(), h.hp.clone(), h.b1, h.b2, h.eps)

def unfused(a, b, offs, p, h, sq):
    g = X._wgrad_ws(a, b, offs, torch.empty_like(p), sq)
    h.apply(p, g)

CFGS = ((64, 4, 16, 2, 64),)   # `experts._WS_WG_ADAM_CFG`: (BK, slots, EW, ES, GW); measured: (32, 6, 16, 4, 64), (64, 3, 16, 2, 128) and others slower

def fused(a, b, offs, p, h, sq, cfg=None):
    if cfg is not None: X._WS_WG_ADAM_CFG = cfg
    X._wgrad_ws(a, b, offs, p, sq, adam=h)

def check(rows, KO, NO, nan=False):
    torch.manual_seed(1)
    offs = torch.tensor([0] + rows, device='cuda').cumsum(0).to(torch.int32)
    N, E = int(offs[-1]), len(rows)
    a, b = torch.randn(N, KO, device='cuda').bfloat16(), torch.randn(N, NO, device='cuda').bfloat16()
    if nan and N: b[0, 0] = float('nan')   # the first expert's first column block: its tiles must stay as they were
    p0, h0 = state(E, KO, NO)
    (p1, h1), (p2, h2) = clone(p0, h0), clone(p0, h0)
    s1, s2 = X._sq_slots(p0), X._sq_slots(p0)
    unfused(a, b, offs, p1, h1, s1); fused(a, b, offs, p2, h2, s2)
    torch.cuda.synchronize()
    out = dict(rows=rows, KO=KO, NO=NO, nan=nan)
    for k, x, y in (('p', p1, p2), ('m', h1.m, h2.m), ('v', h1.v, h2.v), ('copy', h1.copy, h2.copy)):
        if nan:   # compare outside the poisoned tiles; inside, the fused kernel must leave the old values
            e0 = next(i for i, r in enumerate(rows) if r)
            old = {'p': p0, 'm': h0.m, 'v': h0.v, 'copy': h0.copy}[k]
            out[k + '_kept'] = bool(torch.equal(y[e0, :, :128], old[e0, :, :128]))
            x, y = x.clone(), y.clone(); x[e0, :, :128] = 0; y[e0, :, :128] = 0
        d = (x.double() - y.double()).abs().max().item()
        out[k + '_maxabs'] = d; out[k + '_equal'] = bool(torch.equal(x, y))
    out['sq_equal'] = bool(torch.equal(s1, s2)) if not nan else None
    hp = h2.hp.clone(); h2.hp[3] = 0; p3 = p2.clone(); fused(a, b, offs, p2, h2, s2); torch.cuda.synchronize()
    out['paused_unchanged'] = bool(torch.equal(p2, p3)); h2.hp.copy_(hp)
    print(out, flush=True)
    return out

def rounds(res, presets=('small', 'qwen3-30b-a3b-6l'), n_rounds=3):
    from experts_sweep import routing, interleaved_rows
    shapes = {'small': (16384, 8, 64, 1024, 512), 'qwen3-30b-a3b-6l': (16384, 8, 128, 2048, 768)}
    for pre in presets:
        T, k, E, H, I = shapes[pre]
        plan, offs = routing(T, k, E)
        N = plan.token_idx.numel()
        for name, KO, NO in (('dW1', H, 2 * I), ('dW2', I, H)):
            a, b = torch.randn(N, KO, device='cuda').bfloat16(), torch.randn(N, NO, device='cuda').bfloat16()
            p, h = state(E, KO, NO); sq = X._sq_slots(p)
            fns = {'wgrad + adamw': lambda: unfused(a, b, offs, p, h, sq),
                   **{f'fused {c}': (lambda c=c: fused(a, b, offs, p, h, sq, c)) for c in CFGS},
                   'wgrad only': lambda: X._wgrad_ws(a, b, offs, torch.empty_like(p), sq),
                   'adamw only': lambda: h.apply(p, p)}
            res['rows'] += interleaved_rows(fns, n_rounds, rep=40, flop=2 * N * KO * NO, preset=pre, product=name)

if __name__ == '__main__':
    res = dict(date=datetime.date.today().isoformat(), device=torch.cuda.get_device_name(),
               command='python3 benchmarks/wgrad_adam.py ' + ' '.join(sys.argv[1:]), checks=[], rows=[])
    for rows, KO, NO, nan in (([0, 1, 63, 64, 65, 200, 0, 1000, 5], 192, 136, False), ([300, 0, 129], 256, 256, True),
                              ([2048] * 8, 1024, 1024, False)):
        for c in CFGS:
            X._WS_WG_ADAM_CFG = c
            res['checks'].append(dict(check(rows, KO, NO, nan), cfg=c))
    X._WS_WG_ADAM_CFG = CFGS[0]
    if '--check' not in sys.argv: rounds(res)
    out = os.environ.get('OUT')
    if out: json.dump(res, open(os.path.join(out, 'wgrad_adam.json'), 'w'), indent=1)
