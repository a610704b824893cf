"""Count what one router forward+backward launches, on any machine (CPU profiler, no GPU needed).

For each router config of benchmarks/router.py, on the torch path and (where it applies) the fused Triton
path, it runs one forward and `(weights·g).sum() + aux_loss` backward on bf16 tokens (the GPU benchmark's
input dtype, so the fp32 cast is counted) under `torch.profiler` (CPU activity) and counts:
  ops      aten ops called from Python (top level: what the dispatcher sees per call)
  kernels  leaf aten ops that do work (no aten child; views, empty allocs and metadata ops left out),
           plus the Triton kernel launches: roughly the kernels a GPU launches
  nodes    autograd nodes the backward runs
Without CUDA the fused path runs in the Triton interpreter; the aten ops the interpreter itself runs
(copies to and from the host) are left out. The router is launch-bound on the GPU
(benchmarks/results/router_profile-*.txt), so these counts track its cost.

    python3 benchmarks/router_ops.py          # prints a table; JSON to $OUT/router_ops.json when OUT is set
"""
import json, os, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch
if not torch.cuda.is_available(): os.environ.setdefault('TRITON_INTERPRET', '1')   # before triton decorates the kernels
from torch.profiler import profile, ProfilerActivity, record_function
import pithtrain.router as router_mod
from pithtrain.router import Router, fused_ok
from router import variants   # benchmarks/router.py: the same five configs

class _Marked:
    "A Triton kernel whose launches show in the profiler as one `triton::NAME` event (its inner aten ops are not counted)."
    def __init__(self, kern, name): self.kern, self.name = kern, name
    def __getitem__(self, grid):
        launch = self.kern[grid]
        def run(*a, **kw):
            with record_function('triton::' + self.name): return launch(*a, **kw)
        return run

for _n in ('_route_fwd_kernel', '_route_bwd_kernel'): setattr(router_mod, _n, _Marked(getattr(router_mod, _n), _n))

NO_KERNEL = {'aten::empty', 'aten::empty_strided', 'aten::empty_like', 'aten::view', 'aten::_unsafe_view', 'aten::reshape',
             'aten::_reshape_alias', 'aten::as_strided', 'aten::t', 'aten::transpose', 'aten::permute', 'aten::expand',
             'aten::expand_as', 'aten::unsqueeze', 'aten::squeeze', 'aten::select', 'aten::slice', 'aten::alias',
             'aten::detach', 'aten::detach_', 'aten::lift_fresh', 'aten::resize_', 'aten::result_type', 'aten::is_nonzero',
             'aten::numpy_T', 'aten::new_empty', 'aten::contiguous', 'aten::view_as', 'aten::to', 'aten::set_', 'aten::resolve_conj',
             'aten::resolve_neg', 'aten::lift', 'aten::clone_noop'}

def _below(e):
    "True when some aten op under `e` does work."
    return any(c.name.startswith('aten::') and (does_work(c) or _below(c)) for c in e.cpu_children)

def does_work(e):
    "A kernel-like op: not a view/alloc/metadata op, and no aten op under it does the work instead."
    return e.name not in NO_KERNEL and not _below(e)

def count(r, x, g, seq_len):
    "One fwd+bwd under the CPU profiler: (top-level aten ops, kernel-like leaf ops, autograd nodes)."
    def step():
        x.grad = None
        for p in r.parameters(): p.grad = None
        o = r(x, seq_len=seq_len)
        ((o.weights * g).sum() + o.aux_loss).backward()
    step()                                                    # warm-up (lazy init)
    with profile(activities=[ProfilerActivity.CPU]) as p: step()
    evs = [e for e in p.events()]
    def anc(e, prefix):
        a = e.cpu_parent
        while a is not None:
            if a.name.startswith(prefix): return True
            a = a.cpu_parent
        return False
    aten = [e for e in evs if e.name.startswith('aten::') and not anc(e, 'triton::')]
    top = sum(1 for e in aten if not anc(e, 'aten::'))
    leaf = sum(1 for e in aten if does_work(e)) + sum(1 for e in evs if e.name.startswith('triton::'))
    nodes = sum(1 for e in evs if e.name.startswith('autograd::engine::evaluate_function'))
    return top, leaf, nodes

def main():
    torch.manual_seed(0)
    T, H, E, k, S = 512, 256, 128, 8, 256                     # Qwen3 E and k; T and H small (counts do not depend on them)
    x = torch.randn(T, H, dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(T, k)
    rows = []
    print(f"{'router':38s} {'path':6s} {'ops':>5s} {'kernels':>8s} {'nodes':>6s}")
    for name, (cfg, seq_len) in variants(E, k, S).items():
        for path in (('fused', 'torch') if fused_ok(cfg) else ('torch',)):
            r = Router(H, cfg if path == 'fused' else cfg.replace(fused=False), triton_on_cpu=path == 'fused').train()
            top, leaf, nodes = count(r, x, g, seq_len)
            rows.append(dict(router=name, path=path, ops=top, kernels=leaf, autograd_nodes=nodes))
            print(f"{name:38s} {path:6s} {top:5d} {leaf:8d} {nodes:6d}")
    if os.environ.get('OUT'): json.dump(dict(command='python3 benchmarks/router_ops.py', torch=torch.__version__, rows=rows),
                                        open(os.path.join(os.environ['OUT'], 'router_ops.json'), 'w'), indent=1)
    return rows

if __name__ == '__main__': main()
