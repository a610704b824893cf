"""Several ranks on one CPU (gloo): FSDP2 + expert parallelism give the losses of one process on the same global
batch, and a DCP checkpoint saved by 4 ranks resumes on 2 and on 1 with the same losses.

Ranks are started with `pithtrain.distributed.spawn`, which imports the functions below in each child."""
import os, tempfile
import pytest, torch, torch.nn as nn
from pithtrain.distributed import (spawn, init_distributed, split_experts, shard_model, clip_grad_norm_, local_batch,
                                   reduce_metrics, destroy_distributed)
from pithtrain.checkpoint_dcp import save_dcp, load_dcp
from pithtrain.dispatch import make_plan, combine
from pithtrain.dispatch_ep import ep_dispatch, ep_combine
from pithtrain.experts import expert_ffn_grouped_mm
from pithtrain.optim import build_optimizer

TOL = 2e-5   # fp32; the sums are taken in different orders on different layouts

# ---- a small top-k MoE model with the real dispatcher (the `tiny` preset test below needs the router too)
class ToyMoE(nn.Module):
    "Softmax top-k router + expert stacks; uses the EP all-to-all when `split_experts` hands it a group."
    def __init__(self, H, I, E, k):
        super().__init__()
        self.router, self.n_experts, self.k, self.ep_group = nn.Linear(H, E, bias=False), E, k, None
        self.w1 = nn.Parameter(torch.randn(E, H, 2 * I) / H ** .5)
        self.w2 = nn.Parameter(torch.randn(E, I, H) / I ** .5)
    def forward(self, x):
        h = x.reshape(-1, x.shape[-1])
        w, ids = self.router(h).float().softmax(-1).topk(self.k, -1)
        if self.ep_group is not None:
            rows, plan, hd = ep_dispatch(h, ids, self.n_experts, self.ep_group)
            y = ep_combine(expert_ffn_grouped_mm(rows, plan, self.w1, self.w2), w, hd)
        else:
            plan = make_plan(ids, self.n_experts)
            y = combine(expert_ffn_grouped_mm(h, plan, self.w1, self.w2), w, plan)
        return y.reshape(x.shape)

class Block(nn.Module):
    def __init__(self, H, I, E, k): super().__init__(); self.norm, self.mlp = nn.LayerNorm(H), ToyMoE(H, I, E, k)
    def forward(self, x): return x + self.mlp(self.norm(x))

class ToyLM(nn.Module):
    def __init__(self, V=32, H=16, I=8, E=8, k=2, L=2):
        super().__init__()
        self.embed_tokens = nn.Embedding(V, H)
        self.layers = nn.ModuleList(Block(H, I, E, k) for _ in range(L))
        self.lm_head = nn.Linear(H, V, bias=False)
    def forward(self, ids, labels):
        x = self.embed_tokens(ids)
        for b in self.layers: x = b(x)
        return nn.functional.cross_entropy(self.lm_head(x).flatten(0, 1).float(), labels.flatten())

def global_batch(step, B=8, S=12, V=32):
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randint(0, V, (B, S), generator=g), torch.randint(0, V, (B, S), generator=g)

def train(ep=1, steps=3, opt='adamw', save=None, load=None, save_at=None, first=0):
    "On every rank: build whole, cut experts, shard, train `steps` steps; return the global mean losses and grad norms."
    info = init_distributed(ep=ep, n_experts=8, device='cpu', timeout_s=90)
    torch.manual_seed(0)
    model = shard_model(split_experts(ToyLM(), info), info)
    optim = build_optimizer(model, opt, lr=1e-2, weight_decay=0.1)
    if load: load_dcp(load, model, optim, info)
    losses, norms = [], []
    for s in range(first, first + steps):
        if save and s == save_at: save_dcp(save, model, optim, info, extra={'step': s})
        ids, labels = (local_batch(t, info) for t in global_batch(s))
        loss = model(ids, labels)
        loss.backward()
        norms.append(clip_grad_norm_(list(model.parameters()), 1.0, info).item())
        optim.step(); optim.zero_grad()
        losses.append(reduce_metrics({'loss': loss.detach()}, info)['loss'])
    return losses, norms

@pytest.fixture(scope='module')
def reference():
    "One process, no process group, the whole global batch: AdamW and Muon."
    assert 'WORLD_SIZE' not in os.environ
    return {opt: train(opt=opt, steps=4) for opt in ('adamw', 'muon')}

@pytest.mark.parametrize('world,ep,opt', [(2, 1, 'adamw'), (2, 2, 'muon')], ids=['dp2-adamw', 'ep2-muon'])
def test_same_losses_as_one_process(reference, world, ep, opt):
    res = spawn(train, world, ep, 4, opt)
    ref_losses, ref_norms = reference[opt]
    for losses, norms in res:                         # every rank reports the same global numbers
        assert max(abs(a - b) for a, b in zip(losses, ref_losses)) < TOL, (losses, ref_losses)
        assert max(abs(a - b) / b for a, b in zip(norms, ref_norms)) < TOL, (norms, ref_norms)

def test_dp2xep2_and_dcp_4_ranks_resumes_on_2_and_1(reference):
    "dp2 x ep2 with Muon matches one process; its checkpoint (saved before step 2) resumes on 2 ranks and on 1."
    with tempfile.TemporaryDirectory() as d:
        ck = os.path.join(d, 'ckpt')
        four = spawn(train, 4, 2, 4, 'muon', ck, None, 2)
        for losses, norms in four:
            assert max(abs(a - b) for a, b in zip(losses, reference['muon'][0])) < TOL, (losses, reference['muon'][0])
            assert max(abs(a - b) / b for a, b in zip(norms, reference['muon'][1])) < TOL
        four = four[0][0]
        two = spawn(train, 2, 1, 2, 'muon', None, ck, None, 2)[0][0]    # dp2, no EP: experts re-laid out
        one = train(steps=2, opt='muon', load=ck, first=2)[0]           # one process, no group
        assert max(abs(a - b) for a, b in zip(two, four[2:])) < TOL, (two, four[2:])
        assert max(abs(a - b) for a, b in zip(one, four[2:])) < TOL, (one, four[2:])
