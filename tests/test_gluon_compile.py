"""The Gluon kernels of `03_experts` compile for Hopper (sm_90a) on a machine without a GPU — CI's only check of them
before the device (Gluon does not run in the interpreter) — and fit the 227 KB of shared memory a block may use; built
with `PDL` (programmatic dependent launch, `core.pdl`) they wait for the previous grid (`griddepcontrol.wait`)."""
import json, os, subprocess, sys
import pytest

SCRIPT = r'''
import json, triton
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon._runtime import GluonASTSource
from triton.experimental.gluon import language as gl
from pithtrain import experts as X
lay = lambda shape: gl.NVMMASharedLayout.get_default_for(shape, gl.bfloat16)
d = lambda shape: f'tensordesc<bf16[{shape[0]},{shape[1]}],{lay(shape)!r}>'
c = lambda names: {n: 'constexpr' for n in names}
def sm90(kern, sig, cst):
    ck = triton.compile(GluonASTSource(kern, {**sig, 'PDL': 'constexpr'}, {**cst, 'PDL': True}), target=GPUTarget('cuda', 90, 32),
                        options=dict(num_warps=4, maxnreg=168))
    return ck.metadata.shared, 'griddepcontrol.wait' in ck.asm['ptx']
BM, BN, BK, S = X._WS_CFG
out = {'_pmm_ws_kernel': sm90(X._pmm_ws_kernel, dict(a_d=d([BM, BK]), w_d=d([BN, BK]), c_d=d([BM, BN // X._WS_CS]), c='*bf16',
       table='*i32', K='i32', NO='i32', sc_m='i32', NPROG='i32', **c('TW BM BN BK S CS'.split())),
       dict(TW=True, BM=BM, BN=BN, BK=BK, S=S, CS=X._WS_CS))}
BH, BK, S, NB = X._WS_FC1_CFG
out['_fc1_ws_kernel'] = sm90(X._fc1_ws_kernel, dict(a_d=d([BM, BK]), w_d=d([BK, BH]), h_d=d([BM, BH]), g_d=d([BM, BH]),
       u_d=d([BM, BH]), h='*bf16', gu='*bf16', rw='*fp32', table='*i32', K='i32', I='i32', NPROG='i32',
       **c('ROWW BM BH BK S NB'.split())), dict(ROWW=True, BM=BM, BH=BH, BK=BK, S=S, NB=NB))
BM, BN, BK, S = X._WS_WG_CFG
out['_wgrad_ws_kernel'] = sm90(X._wgrad_ws_kernel, dict(a_d=d([BK, BM]), b_d=d([BK, BN]), offs='*i32', order='*i32', dw='*fp32', sq='*fp32',
       E='i32', KO='i32', NO='i32', NPROG='i32', **c('SQ BM BN BK S DEAL'.split())),
       dict(SQ=True, BM=BM, BN=BN, BK=BK, S=S, DEAL=X._WS_WG_DEAL))
print(json.dumps(out))
'''

def test_gluon_kernels_compile_for_hopper():
    from pithtrain import experts as X
    if not X._GLUON: pytest.skip('this Triton has no Gluon')
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}   # interpreted helpers (gl.sum's) cannot compile
    r = subprocess.run([sys.executable, '-c', SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    smem = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(smem) == {'_pmm_ws_kernel', '_fc1_ws_kernel', '_wgrad_ws_kernel'}
    for name, (b, waits) in smem.items(): assert 150_000 < b <= 227 * 1024 and waits, (name, b, waits)
