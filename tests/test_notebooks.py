"Run every notebook's tests, each in its own process with a timeout (cells flagged notest/gpu/multigpu/slow are skipped)."
import os, subprocess, sys
from pathlib import Path
import pytest
pytest.importorskip("nbdev")

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted(p for p in (ROOT / 'nbs').glob('*.ipynb') if not p.name.startswith('_'))
TIMEOUT = int(os.environ.get('PITHTRAIN_NB_TIMEOUT', '400'))

@pytest.mark.parametrize('nb', NBS, ids=[p.stem for p in NBS])
def test_notebook(nb):
    exe = Path(sys.executable).parent / 'nbdev_test'
    env = {**os.environ, 'TRITON_INTERPRET': os.environ.get('TRITON_INTERPRET', '1'), 'OPENBLAS_NUM_THREADS': '1'}
    try: r = subprocess.run([str(exe), '--path', str(nb), '--do_print'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired: pytest.fail(f'{nb.name}: timed out after {TIMEOUT}s')
    if r.returncode != 0 or 'nbdev Tests Failed' in r.stdout + r.stderr:
        pytest.fail(f'{nb.name} failed (exit {r.returncode}):\n{r.stdout[-6000:]}\n{r.stderr[-12000:]}', pytrace=False)
