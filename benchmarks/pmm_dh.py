"""Prototype (not in the library): the SwiGLU backward in the epilogue of the persistent dh product.

Today `experts._dgu` runs dh = dy_rows @ w2[e]ᵀ through `_pmm` (N × I bf16 written), then `_act_bwd_kernel` reads dh
and the stored pre-activations gu and writes dgu (and drw, the routing weights' gradient). Fusing the pass into a
per-tile GEMM's epilogue ran 1.5× slower (round 5: the `_dh` path, `PITHTRAIN_DH_SPLIT=0`); this asks the persistent,
flattened loop of `_pmm` the same question: the tile's dh never leaves registers, the epilogue loads the tile's g and u,
writes dg and du, and one partial Σ dh·act(g, u) per (row, column tile) for drw (summed after, in a fixed order).

    PYTHONPATH=$PWD python3 benchmarks/pmm_dh.py                # GPU: interleaved rounds against `_dgu`; $OUT/pmm_dh.json
    TRITON_INTERPRET=1 python3 benchmarks/pmm_dh.py --cpu-smoke  # CPU: equals `_dgu` (awkward experts)
"""
import os, sys, json, datetime
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch, triton, triton.language as tl
from pithtrain import experts as X
from pithtrain.experts import _expert_rows, _tile_rows, _act_fwd, _act_bwd

@triton.jit
def _pmm_dh_kernel(a_d, w_d, offs, gu, dgu, rw, drwp, E, K, I, NPROG, MB, alpha, limit, OAI:tl.constexpr, ROWW:tl.constexpr,
                   DW:tl.constexpr, FLAT:tl.constexpr, EP2:tl.constexpr, BM:tl.constexpr, BN:tl.constexpr, BK:tl.constexpr):
    "dh = a[rows of e] @ w[e]ᵀ (w (E, I, K)) kept in registers; dgu = act'(gu) ⊙ (rw ·) dh; drwp[row, tile] = Σ dh·act(gu)."
    e_, lo, hi, tiles, ends = _expert_rows(offs, E, BM, EP2)
    n_tiles = tl.cdiv(I, BN)
    for t in tl.range(tl.program_id(0), tl.sum(tiles, 0) * n_tiles, NPROG, flatten=FLAT):
        pid_m, pid_n = t // n_tiles, t % n_tiles
        e, row0, rend = _tile_rows(e_, lo, hi, tiles, ends, pid_m, BM)
        acc = tl.zeros((BM, BN), tl.float32)
        for k0 in range(0, K, BK):
            acc = tl.dot(a_d.load([row0, k0]), tl.trans(w_d.load([e * I + pid_n * BN, k0])), acc)
        rm = row0 + tl.arange(0, BM)
        rok = rm < rend
        row = rm.to(tl.int64)[:, None] * (2 * I)
        rwv = tl.load(rw + tl.minimum(rm, rend - 1)).to(tl.float32) if ROWW else rok.to(tl.float32)
        # the epilogue in four column chunks (register-only splits: columns BN/2 and BN/4 apart sit in one thread), so
        # the SwiGLU backward's temporaries stay small
        h0, h1 = tl.split(tl.permute(tl.reshape(acc, (BM, 2, BN // 2)), (0, 2, 1)))
        q0, q1 = tl.split(tl.permute(tl.reshape(h0, (BM, 2, BN // 4)), (0, 2, 1)))
        q2, q3 = tl.split(tl.permute(tl.reshape(h1, (BM, 2, BN // 4)), (0, 2, 1)))
        part = _dh_chunk(q0, gu, dgu, row, rok, rwv, pid_n * BN, I, alpha, limit, OAI, ROWW, DW, BN // 4)
        part += _dh_chunk(q1, gu, dgu, row, rok, rwv, pid_n * BN + BN // 4, I, alpha, limit, OAI, ROWW, DW, BN // 4)
        part += _dh_chunk(q2, gu, dgu, row, rok, rwv, pid_n * BN + BN // 2, I, alpha, limit, OAI, ROWW, DW, BN // 4)
        part += _dh_chunk(q3, gu, dgu, row, rok, rwv, pid_n * BN + 3 * BN // 4, I, alpha, limit, OAI, ROWW, DW, BN // 4)
        if DW: tl.store(drwp + rm.to(tl.int64) * n_tiles + pid_n, part, mask=rok)

@triton.jit
def _dh_chunk(d, gu, dgu, row, rok, rwv, c0, I, alpha, limit, OAI:tl.constexpr, ROWW:tl.constexpr, DW:tl.constexpr, BC:tl.constexpr):
    "One column chunk: dgu[:, c0 + j] (gate) and [:, I + c0 + j] (up) from dh chunk d; returns its Σ_j d·act(g, u) per row."
    rn = c0 + tl.arange(0, BC)
    m = rok[:, None] & (rn < I)[None, :]
    g = tl.load(gu + row + rn[None, :], mask=m, other=0.0).to(tl.float32)
    u = tl.load(gu + row + I + rn[None, :], mask=m, other=0.0).to(tl.float32)
    part = tl.sum(d * _act_fwd(g, u, alpha, limit, OAI), 1) if DW else tl.sum(d, 1) * 0.0
    if ROWW: d = d * rwv[:, None]
    dg, du = _act_bwd(d, g, u, alpha, limit, OAI)
    tl.store(dgu + row + rn[None, :], dg.to(dgu.dtype.element_ty), mask=m)
    tl.store(dgu + row + I + rn[None, :], du.to(dgu.dtype.element_ty), mask=m)
    return part

def hook(nargs):
    nargs['a_d'].block_shape, nargs['w_d'].block_shape = [nargs['BM'], nargs['BK']], [nargs['BN'], nargs['BK']]

def tuned(cfgs):
    return triton.autotune([triton.Config({'BM': m, 'BN': n, 'BK': k}, num_warps=w, num_stages=s, pre_hook=hook)
                            for m, n, k, w, s in cfgs], key=['K', 'I', 'MB'], do_bench=X._bench)(_pmm_dh_kernel)

def fused(kern, dy, offs, w2, gu, rw, need_drw=True, flat=True):
    "(dgu, drw) as `experts._dgu` returns them (plain gate|up layout, SwiGLU)."
    N, (E, I, H) = dy.shape[0], w2.shape
    dgu = torch.empty_like(gu)
    drwp = torch.empty(N * triton.cdiv(I, 32), device=dy.device, dtype=torch.float32) if need_drw else dgu   # (N, cdiv(I, BN)) for BN ≥ 32
    n = X._nprog(dy.device)
    kern[(n,)](X._desc(dy), X._desc(w2), offs, gu, dgu, rw if rw is not None else dgu, drwp, E, H, I, n, MB=X._mb(N),
               alpha=1.0, limit=0.0, OAI=False, ROWW=rw is not None, DW=need_drw, FLAT=flat, EP2=triton.next_power_of_2(E))
    return dgu, drwp

def finish(drwp, I, bn):
    "drw from the partials, (N, cdiv(I, BN)) at the buffer's start, summed in order."
    nt = triton.cdiv(I, bn)
    return drwp[:drwp.numel() // triton.cdiv(I, 32) * nt].view(-1, nt).sum(1)

def smoke():
    "Interpreter: experts of 0, 1, 70, 130 and 33 rows, H 64, I 96 (a partial column tile), with row weights."
    torch.manual_seed(0)
    rows = [0, 1, 70, 130, 33]
    offs = torch.tensor([0] + list(torch.tensor(rows).cumsum(0)), dtype=torch.int32)
    N, H, I = sum(rows), 64, 96
    dy, w2, gu, rw = torch.randn(N, H), torch.randn(len(rows), I, H) * 0.2, torch.randn(N, 2 * I), torch.rand(N)
    ref, rdrw = X._dgu(dy, offs, w2, gu, False, False, 1.0, 0.0, rw, True)
    for cfg in ((32, 64, 32, 4, 1), (32, 128, 32, 4, 1)):
        dgu, drwp = fused(tuned([cfg]), dy, offs, w2, gu, rw)
        e1 = ((dgu - ref).norm() / ref.norm()).item()
        e2 = ((finish(drwp, I, cfg[1]) - rdrw).norm() / rdrw.norm()).item()
        print(f'cfg {cfg}: dgu rel err {e1:.1e}, drw {e2:.1e}', flush=True)
        assert e1 < 1e-5 and e2 < 1e-5

CFGS = ((128, 128, 64, 8, 4), (128, 128, 64, 8, 3), (128, 256, 64, 8, 3), (128, 128, 64, 4, 4), (64, 128, 64, 4, 4), (128, 64, 64, 4, 4))

def main(rounds=4):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from experts_sweep import routing, SHAPES, interleaved_rows
    res = dict(date=datetime.date.today().isoformat(), device=torch.cuda.get_device_name(),
               command='python3 benchmarks/pmm_dh.py ' + ' '.join(sys.argv[1:]), rows=[])
    bf, out = torch.bfloat16, os.environ.get('OUT')
    for sname, (T, k, E, H, I) in SHAPES.items():
        plan, offs = routing(T, k, E)
        N = plan.token_idx.numel()
        dy, gu = torch.randn(N, H, device='cuda', dtype=bf) * 0.1, torch.randn(N, 2 * I, device='cuda', dtype=bf)
        w2, rw = torch.randn(E, I, H, device='cuda', dtype=bf) * 0.02, torch.rand(N, device='cuda')
        ref, rdrw = X._dgu(dy, offs, w2, gu, False, False, 1.0, 0.0, rw, True)
        ref, rdrw = ref.float(), rdrw.float()
        fns = {'_dgu (dh by _pmm + SwiGLU pass)': lambda: X._dgu(dy, offs, w2, gu, False, False, 1.0, 0.0, rw, True)}
        for cfg, flat in [(c, f) for c in CFGS for f in (True, False)]:
            kern = tuned([cfg])
            try:
                dgu, drwp = fused(kern, dy, offs, w2, gu, rw, flat=flat); torch.cuda.synchronize()
                e1 = ((dgu.float() - ref).norm() / ref.norm()).item()
                e2 = ((finish(drwp, I, cfg[1]) - rdrw).norm() / rdrw.norm()).item()
                res['rows'].append(dict(shape=sname, cfg=cfg, flat=flat, err_dgu=e1, err_drw=e2)); print(res['rows'][-1], flush=True)
                fns[f'{cfg} flat={flat}'] = (lambda kern, bn, fl: lambda: finish(fused(kern, dy, offs, w2, gu, rw, flat=fl)[1], I, bn))(kern, cfg[1], flat)
            except Exception as ex:
                res['rows'].append(dict(shape=sname, cfg=cfg, error=repr(ex)[:300])); print(res['rows'][-1], flush=True)
        res['rows'] += interleaved_rows(fns, rounds, shape=sname)
        if out: json.dump(res, open(os.path.join(out, 'pmm_dh.json'), 'w'), indent=1)

if __name__ == '__main__': smoke() if '--cpu-smoke' in sys.argv else main()
