import os, pytest, torch
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

def pytest_configure(config):
    config.addinivalue_line('markers', 'gpu: needs a CUDA device (skipped without one)')
    config.addinivalue_line('markers', 'multigpu: needs two or more CUDA devices')

def pytest_collection_modifyitems(config, items):
    n = torch.cuda.device_count()
    for it in items:
        if 'gpu' in it.keywords and n == 0: it.add_marker(pytest.mark.skip(reason='no CUDA device'))
        if 'multigpu' in it.keywords and n < 2: it.add_marker(pytest.mark.skip(reason='needs 2+ CUDA devices'))
