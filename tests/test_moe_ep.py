"MoE layer with expert parallelism over 2 gloo ranks equals the single-process layer (forward and gradients)."
import os, socket, tempfile
import pytest, torch
import torch.distributed as dist
import torch.multiprocessing as mp

def _port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    from datetime import timedelta
    dist.init_process_group('gloo', rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        from pithtrain.moe import MoE
        from pithtrain.router import RouterConfig
        torch.manual_seed(0)
        rc = RouterConfig(n_experts=8, top_k=2)
        full = MoE(16, 8, rc)                                    # same weights on every rank (same seed)
        x = torch.randn(2, 6 + rank, 16)                         # each rank has its own tokens (uneven)
        torch.manual_seed(0)
        for dedup in (False, True):
            ep = MoE(16, 8, rc, ep_group=dist.group.WORLD, ep_dedup=dedup)
            El = 8 // world
            with torch.no_grad():
                ep.router.load_state_dict(full.router.state_dict())
                ep.w1.copy_(full.w1[rank * El:(rank + 1) * El]); ep.w2.copy_(full.w2[rank * El:(rank + 1) * El])
            assert ep.expert_offset == rank * El
            xe, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
            y, _ = ep(xe); yr, _ = full(xf)
            torch.testing.assert_close(y, yr, rtol=1e-5, atol=1e-6)
            g = torch.randn_like(y); y.backward(g); yr.backward(g)
            torch.testing.assert_close(xe.grad, xf.grad, rtol=1e-5, atol=1e-6)
            gw = full.w1.grad.clone(); dist.all_reduce(gw)       # the full layer's expert grads summed over ranks' tokens
            torch.testing.assert_close(ep.w1.grad, gw[rank * El:(rank + 1) * El], rtol=1e-5, atol=1e-6)
            full.zero_grad()
        open(os.path.join(out_dir, f'ok{rank}'), 'w').write('ok')
    finally: dist.destroy_process_group()

def test_moe_ep_two_ranks():
    pytest.importorskip('pithtrain.router')
    d = tempfile.mkdtemp()
    mp.spawn(_worker, args=(2, _port(), d), nprocs=2, join=True)
    assert sorted(os.listdir(d)) == ['ok0', 'ok1']
