"""Prototype (not in the library): the persistent plain expert products (`experts._pmm_kernel`: fc2, dx, dh) storing
their output tiles through TMA, with a tensor descriptor made on the device per tile whose row bound is the end of
the tile's expert — so an expert's last, partial tile is clipped by the TMA unit instead of a masked pointer store,
and the epilogue has no branch (an if/else between a TMA and a masked store is what Triton 3.6's loop fusion
rejected: `NOTES-experts.md` round 8). fc1's TMA stores gained 4% (round 8); this asks the same of the products.

Compiled for sm90 on a CPU (no GPU run yet): no spills, 128×256×64×8×3 needs 213 KB of shared memory (180 KB with
pointer stores), the 4-stage 128×256 config no longer fits (262 KB), 640–896 bytes of global scratch per program
for the descriptors (`triton.set_allocator`).

    PYTHONPATH=$PWD python3 benchmarks/pmm_tma_store.py               # GPU: µs per config against `_pmm`, at the e2e shapes
    TRITON_INTERPRET=1 python3 benchmarks/pmm_tma_store.py --cpu-smoke # CPU: equals a torch reference (awkward experts)
"""
import os, sys, json, datetime
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch, triton, triton.language as tl
from pithtrain import experts as X
from pithtrain.experts import _expert_rows, _tile_rows

@triton.jit
def _pmm_ds_kernel(a_d, w_d, offs, bias, c, E, K, NO, sc_m, NPROG, MB, HAS_BIAS:tl.constexpr, TW:tl.constexpr,
                   EP2:tl.constexpr, BM:tl.constexpr, BN:tl.constexpr, BK:tl.constexpr):
    "`experts._pmm_kernel` with each output tile stored through a descriptor bounded by its expert's last row."
    e_, lo, hi, tiles, ends = _expert_rows(offs, E, BM, EP2)
    n_tiles = tl.cdiv(NO, BN)
    for t in tl.range(tl.program_id(0), tl.sum(tiles, 0) * n_tiles, NPROG, flatten=True):
        pid_m, pid_n = t // n_tiles, t % n_tiles
        e, row0, rend = _tile_rows(e_, lo, hi, tiles, ends, pid_m, BM)
        acc = tl.zeros((BM, BN), tl.float32)
        for k0 in range(0, K, BK):
            bt = tl.trans(w_d.load([e * NO + pid_n * BN, k0])) if TW else w_d.load([e * K + k0, pid_n * BN])
            acc = tl.dot(a_d.load([row0, k0]), bt, acc)
        rn = pid_n * BN + tl.arange(0, BN)
        if HAS_BIAS: acc += tl.load(bias + e * NO + rn, mask=rn < NO, other=0.0).to(tl.float32)[None, :]
        cd = tl.make_tensor_descriptor(c, shape=[rend, NO], strides=[sc_m, 1], block_shape=[BM, BN])   # rows ≥ rend: clipped
        cd.store([row0, pid_n * BN], acc.to(c.dtype.element_ty))

def launch(kern, a, offs, w, c, K, NO, tw):
    "As `experts._launch` calls `_pmm` (no bias): c[rows of e] = a[rows of e] @ w[e] (w[e] read transposed when tw)."
    n, E = X._nprog(c.device), offs.numel() - 1
    kern[(n,)](X._desc(a), X._desc(w), offs, c, c, E, K, NO, c.stride(0), n, MB=X._mb(a.shape[0]), HAS_BIAS=False, TW=tw,
               EP2=triton.next_power_of_2(E))
    return c

def smoke():
    """Interpreter: experts of 0, 1, 70, 130 and 33 rows (tiles of 32), K 64, 96 output columns; unwritten rows would stay
    NaN, and 40 rows past the last expert's partial tile must stay NaN (the descriptor's row bound clips the store)."""
    torch.manual_seed(0)
    rows = [0, 1, 70, 130, 33]
    offs = torch.tensor([0] + list(torch.tensor(rows).cumsum(0)), dtype=torch.int32)
    N, K, NO = sum(rows), 64, 96
    a, w = torch.randn(N, K), torch.randn(len(rows), K, NO)
    for tw in (False, True):
        wt = w.transpose(1, 2).contiguous() if tw else w   # stored (E, NO, K) when read transposed
        for kern in (X._tuned(_pmm_ds_kernel, X._cfgs((32, 32, 32, 4, 1)), ['K']), X._pmm):
            c = torch.full((N + 40, NO), float('nan'))
            launch(kern, a, offs, wt, c, K, NO, tw)
            assert c[N:].isnan().all(), 'a store went past the last expert'
            ref = torch.cat([a[offs[e]:offs[e + 1]] @ w[e] for e in range(len(rows))])
            err = ((c[:N] - ref).norm() / ref.norm()).item()
            print(f'tw={tw} {"ds " if kern.fn is _pmm_ds_kernel else "ptr"}: rel err {err:.2e}', flush=True)
            assert err < 1e-5, err

def main():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from experts_sweep import plain_products, SHAPES
    from triton.testing import do_bench
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device='cuda'))
    res = dict(date=datetime.date.today().isoformat(), device=torch.cuda.get_device_name(),
               command='python3 benchmarks/pmm_tma_store.py ' + ' '.join(sys.argv[1:]), rows=[])
    bf = torch.bfloat16
    for sname, (T, k, E, H, I) in SHAPES.items():
        offs, N, prods = plain_products(T, k, E, H, I)
        for what, a, w, K, NO, tw in prods:
            flop = 2 * N * K * NO
            c = torch.empty(N, NO, device='cuda', dtype=bf)
            ref = launch(X._pmm, a, offs, w, torch.empty_like(c), K, NO, tw).float()
            t0 = do_bench(lambda: launch(X._pmm, a, offs, w, c, K, NO, tw), warmup=5, rep=40, return_mode='median') * 1e3
            res['rows'].append(dict(shape=sname, gemm=what, kernel='_pmm (autotuned)', us=round(t0, 1), tflops=round(flop / t0 / 1e6, 1)))
            print(res['rows'][-1], flush=True)
            for cfg in X._SHAPES['_pmm']:
                kern = X._tuned(_pmm_ds_kernel, X._cfgs(cfg), ['K'])
                try:
                    c.fill_(float('nan')); launch(kern, a, offs, w, c, K, NO, tw); torch.cuda.synchronize()
                    err = ((c.float() - ref).norm() / ref.norm()).item()
                    t = do_bench(lambda: launch(kern, a, offs, w, c, K, NO, tw), warmup=5, rep=40, return_mode='median') * 1e3
                    row = dict(shape=sname, gemm=what, kernel='tma-store', cfg=cfg, us=round(t, 1), tflops=round(flop / t / 1e6, 1), rel_err=err)
                except Exception as ex: row = dict(shape=sname, gemm=what, kernel='tma-store', cfg=cfg, error=repr(ex)[:200])
                res['rows'].append(row); print(row, flush=True)
    out = os.environ.get('OUT')
    if out: json.dump(res, open(os.path.join(out, 'pmm_tma_store.json'), 'w'), indent=1)

if __name__ == '__main__': smoke() if '--cpu-smoke' in sys.argv else main()
