"Trainer, checkpoint and CLI end-to-end tests on the real tiny Qwen3-MoE (CPU, fp32, a few steps each)."
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest, torch
from pithtrain.core import ConfigError, seed_everything
from pithtrain.trainer import TrainConfig, train, build_model, load_model, NonFiniteError
from pithtrain.checkpoint import latest_checkpoint, load_checkpoint
import pithtrain.checkpoint as ckpt_mod

SMALL = dict(batch_size=2, seq_len=32, warmup=1, log_every=1, eval_every=0, eval_batches=1, device='cpu', plots=False, dtype='fp32')

def cfg(run_dir, **kw): return TrainConfig(run_dir=str(run_dir), **{**SMALL, **kw})
def losses(d): return [r['loss'] for r in map(json.loads, (Path(d)/'metrics.jsonl').read_text().splitlines()) if 'loss' in r]

def test_resume_is_exact(tmp_path):
    "N steps + stop + resume N more == 2N steps in one go (fp32: identical losses)."
    train(cfg(tmp_path/'once', steps=6), progress=False)
    s = train(cfg(tmp_path/'twice', steps=6), progress=False, stop_after=3)
    assert s['stopped_by'] == 'stop_after' and len(losses(tmp_path/'twice')) == 3
    s = train(cfg(tmp_path/'twice', steps=6), progress=False)
    assert s['start_step'] == 3
    assert losses(tmp_path/'twice') == losses(tmp_path/'once')

def test_crash_mid_checkpoint_keeps_previous(tmp_path, monkeypatch):
    "A failure while writing step 4's checkpoint leaves step 2's complete and loadable; the run then resumes from it."
    real = ckpt_mod._save
    def failing(obj, f):
        if f.name == 'train_state.pt' and 'step_00000004' in f.parent.name: f.write_bytes(b'half'); raise OSError(28, 'No space left on device')
        real(obj, f)
    monkeypatch.setattr(ckpt_mod, '_save', failing)
    with pytest.raises(OSError, match='No space left'): train(cfg(tmp_path, steps=6, ckpt_every=2), progress=False)
    monkeypatch.setattr(ckpt_mod, '_save', real)
    assert latest_checkpoint(tmp_path/'checkpoints').name == 'step_00000002'
    model, tok, meta = load_model(tmp_path)
    assert meta['step'] == 2
    s = train(cfg(tmp_path, steps=6, ckpt_every=2), progress=False)
    assert s['start_step'] == 2 and s['step'] == 6

def test_sigterm_saves_checkpoint(tmp_path):
    "SIGTERM to a running `pithtrain train` leaves a loadable checkpoint and exit status 143."
    args = ['train', '-q', 'steps=100000', 'warmup=1', 'batch_size=2', 'seq_len=32', 'log_every=1', 'eval_every=0', f'run_dir={tmp_path}']
    p = subprocess.Popen([sys.executable, '-c', f'import sys; from pithtrain.cli import main; sys.exit(main({args!r}))'],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, 'OPENBLAS_NUM_THREADS': '1'})
    t0 = time.time()
    while not (tmp_path/'metrics.jsonl').exists():
        assert p.poll() is None and time.time() - t0 < 120, p.communicate()
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 143, (out, err)
    assert 'stopped by SIGTERM' in out
    ck = latest_checkpoint(tmp_path/'checkpoints')
    model, tok, meta = load_model(ck)
    assert meta['step'] >= 1 and meta['train_config']['steps'] == 100000

def poisoned(c, at):
    "The run's model (initialised as `train` would), its loss NaN at the `at`-th forward."
    seed_everything(c.seed); m = build_model(c); fwd, n = m.forward, [0]
    def f(*a, **k):
        n[0] += 1; out = fwd(*a, **k)
        return out._replace(loss=out.loss * float('nan')) if n[0] == at else out
    m.forward = f
    return m

def test_nan_is_caught_at_its_step(tmp_path):
    "A NaN loss injected at step 3 stops the run there (state of step 2 saved) or is skipped."
    poisoned_ = lambda at: poisoned(cfg(tmp_path), at)
    with pytest.raises(NonFiniteError, match='non-finite value at step 3'): train(cfg(tmp_path/'stop', steps=5), poisoned_(3), progress=False)
    assert latest_checkpoint(tmp_path/'stop'/'checkpoints').name == 'step_00000002'
    s = train(cfg(tmp_path/'skip', steps=5, nan_policy='skip'), poisoned_(3), progress=False)
    assert s['skipped'] == 1 and s['step'] == 5
    rows = [json.loads(l) for l in (tmp_path/'skip'/'metrics.jsonl').read_text().splitlines()]
    assert [r['step'] for r in rows if r.get('skipped')] == [3]

def _state(ck):
    "(model state dict, optimizer step counts) of a checkpoint directory."
    tsd = torch.load(Path(ck)/'train_state.pt', weights_only=False)
    return torch.load(Path(ck)/'model.pt', weights_only=True), sorted({float(s['step']) for s in tsd['optimizer']['state'].values()})

def guarded_nan_runs(tmp_path, c, tol=0.0):
    "A NaN at step 3 with the update launched before the finite check: stop keeps step 2's state, skip leaves no trace."
    " `tol`: relative difference allowed against a clean run of two steps (0 on CPU; a GPU's atomics make runs differ)."
    train(c(tmp_path/'clean', steps=2), progress=False)
    with pytest.raises(NonFiniteError, match='non-finite value at step 3'): train(c(tmp_path/'stop', steps=5), poisoned(c(tmp_path), 3), progress=False)
    (want, n0), (got, n1) = _state(tmp_path/'clean'/'checkpoints'/'step_00000002'), _state(tmp_path/'stop'/'checkpoints'/'step_00000002')
    assert latest_checkpoint(tmp_path/'stop'/'checkpoints').name == 'step_00000002' and n0 == n1 == [2.0]
    for k in want:   # a NaN gradient that reached the weights would make them NaN
        assert torch.isfinite(got[k]).all() and (got[k] - want[k]).float().norm() <= tol * want[k].float().norm(), k
    # without clipping no NaN factor comes from the norm itself: the skip flag alone keeps the NaN out
    s = train(c(tmp_path/'skip', steps=5, nan_policy='skip', grad_clip=0.0), poisoned(c(tmp_path), 3), progress=False)
    assert s['skipped'] == 1 and s['step'] == 5
    sd, n = _state(tmp_path/'skip'/'checkpoints'/'step_00000005')
    assert n == [4.0] and all(torch.isfinite(v).all() for v in sd.values())   # four updates, the skipped one not counted

@pytest.mark.skipif(os.environ.get('TRITON_INTERPRET') != '1', reason="pithtrain's AdamW on CPU runs its Triton step through the interpreter")
def test_nan_with_the_update_launched_first(tmp_path, monkeypatch):
    "With an optimizer that skips a step on the device (pithtrain's AdamW, interpreted), the loop launches the update first."
    import pithtrain.trainer as T
    from pithtrain.optim import AdamW, param_groups
    made = []
    def build(model, name, lr, wd, betas, state_dtype):
        made.append(AdamW(param_groups(model, wd), lr=lr, betas=betas, triton_on_cpu=True)); return made[-1]
    monkeypatch.setattr(T, 'build_optimizer', build)
    guarded_nan_runs(tmp_path, cfg)
    assert made and all(o.skips_on_device for o in made)

def test_bad_config_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="TrainConfig.nan_policy = 'ignore' is not allowed"): TrainConfig(nan_policy='ignore')
    with pytest.raises(ConfigError, match='hidden_size = -1: must be > 0'): train(cfg(tmp_path/'a', model={'hidden_size': -1}), progress=False)
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['hidden'\] for Qwen3MoEConfig"): train(cfg(tmp_path/'b', model={'hidden': 8}), progress=False)
    assert not (tmp_path/'a').exists()
    r = subprocess.run([sys.executable, '-c', "import sys; from pithtrain.cli import main; sys.exit(main(['train', 'steps=0']))"], capture_output=True, text=True)
    assert r.returncode == 2 and 'TrainConfig.steps = 0: must be > 0' in r.stderr, r.stderr

def test_loggers_missing_is_a_warning(tmp_path, capsys):
    "wandb/tensorboard asked for but not installed: a warning, and the run goes on."
    s = train(cfg(tmp_path, steps=2, wandb=True, tensorboard=True), progress=False)
    assert s['step'] == 2

@pytest.mark.gpu
def test_cuda_bf16_run_resume_and_mfu(tmp_path):
    "On CUDA: bf16 autocast over fp32 master weights, fused AdamW, MFU logged, resume works, loss falls."
    c = TrainConfig(run_dir=str(tmp_path), batch_size=8, seq_len=128, steps=40, warmup=4, log_every=5, eval_every=20, device='cuda')
    s = train(c, progress=False, stop_after=20)
    assert s['stopped_by'] == 'stop_after'
    s = train(c, progress=False)
    assert s['start_step'] == 20 and s['step'] == 40
    rows = [json.loads(l) for l in (tmp_path/'metrics.jsonl').read_text().splitlines()]
    tr = [r for r in rows if 'loss' in r]
    assert all('mfu' in r and r['peak_mem_gb'] > 0 for r in tr)
    assert tr[-1]['loss'] < 0.8 * tr[0]['loss']
    assert (tmp_path/'loss.png').exists() and (tmp_path/'expert_load.png').exists()
    model, tok, meta = load_model(tmp_path, 'cuda')
    assert next(model.parameters()).dtype == torch.float32

def test_export_hf_and_finetune_from_it(tmp_path):
    "Training checkpoint -> HF safetensors (CLI convert) -> a new run starts from those weights (init_from)."
    from pithtrain.cli import main
    s = train(cfg(tmp_path/'pre', steps=30, lr=1e-2), progress=False)
    assert main(['convert', str(tmp_path/'pre'), str(tmp_path/'hf'), '--dtype', 'fp32']) == 0
    assert (tmp_path/'hf'/'model.safetensors').exists() and json.loads((tmp_path/'hf'/'config.json').read_text())['model_type'] == 'qwen3_moe'
    ft = train(cfg(tmp_path/'ft', steps=2, init_from=str(tmp_path/'hf')), progress=False)
    scratch = train(cfg(tmp_path/'scratch', steps=2), progress=False)
    assert ft['first_loss'] < scratch['first_loss'] - 1.0, (ft, scratch)

def _twin_tiny_models(n_batches:int):
    "Two identical tiny Qwen3-MoE models on the GPU and `n_batches` (input_ids, labels) batches."
    from pithtrain.qwen3_moe import Qwen3MoE, Qwen3MoEConfig
    dev = torch.device('cuda'); torch.manual_seed(0)
    c = Qwen3MoEConfig.preset('tiny')
    ma, mb = Qwen3MoE(c).to(dev), Qwen3MoE(c).to(dev); mb.load_state_dict(ma.state_dict())
    g = torch.Generator().manual_seed(1)
    data = [(ids, ids.roll(-1, 1)) for ids in (torch.randint(0, c.vocab_size, (4, 64), generator=g) for _ in range(n_batches))]
    return dev, ma, mb, data

def _train_losses(m, fb, opt, data, dev)->list:
    "The trainer's step (`fb`, clipped AdamW) over `data`; the losses."
    from pithtrain.distributed import clip_grad_norm_, clipped_step
    ps, ls = [p for p in m.parameters() if p.requires_grad], []
    for x, y in data:
        loss, aux, counts = fb([(x.to(dev), y.to(dev))])
        clipped_step(opt, ps, clip_grad_norm_(ps, float('inf')), 1.0); opt.zero_grad(set_to_none=True)
        ls.append(loss.item())
    return ls

@pytest.mark.gpu
def test_cuda_graph_step_matches_eager(tmp_path):
    "GraphedStep: forward + backward replayed as a CUDA graph gives the eager step's losses and updates; recaptured when copies appear."
    from pithtrain.trainer import GraphedStep, forward_backward
    from pithtrain.optim import build_optimizer
    dev, ma, mb, data = _twin_tiny_models(6)
    gs = GraphedStep(mb, dev, torch.bfloat16)
    runs = {name: _train_losses(m, fb, build_optimizer(m, 'adamw', lr=1e-3), data, dev)
            for name, m, fb in (('eager', ma, lambda b: forward_backward(ma, b, dev, torch.bfloat16)), ('graph', mb, gs))}
    assert gs.captures == 2, gs.captures   # once with casts, once more when the optimizer's bf16 copies exist
    assert max(abs(a - b) for a, b in zip(runs['eager'], runs['graph'])) < 2e-2, runs
    assert runs['graph'][-1] < runs['graph'][0]
    for pa, pb in zip(ma.parameters(), mb.parameters()): assert (pa - pb).norm() <= 2e-2 * pa.norm() + 1e-6

@pytest.mark.gpu
def test_cuda_graph_training_run(tmp_path):
    "The trainer with cuda_graph=True: loss falls, a resumed run continues."
    c = TrainConfig(run_dir=str(tmp_path), batch_size=8, seq_len=128, steps=30, warmup=4, log_every=5, eval_every=0, device='cuda', cuda_graph=True)
    s = train(c, progress=False, stop_after=15)
    s = train(c, progress=False)
    assert s['start_step'] == 15 and s['step'] == 30
    tr = [json.loads(l) for l in (tmp_path/'metrics.jsonl').read_text().splitlines()]
    tr = [r for r in tr if 'loss' in r]
    assert tr[-1]['loss'] < 0.8 * tr[0]['loss'], tr

@pytest.mark.gpu
def test_cuda_graph_overlapped_optimizer_matches(tmp_path):
    "GraphedStep(opt=...): the AdamW step on a side stream beside the next forward gives the losses and weights of the step after it."
    from pithtrain.trainer import GraphedStep
    from pithtrain.optim import build_optimizer
    dev, ma, mb, data = _twin_tiny_models(8)
    runs, opts = {}, {}
    for name, m in (('after', ma), ('beside', mb)):
        opt = opts[name] = build_optimizer(m, 'adamw', lr=1e-3)
        runs[name] = _train_losses(m, GraphedStep(m, dev, torch.bfloat16, opt=opt if name == 'beside' else None), opt, data, dev)
    opts['beside'].join(); torch.cuda.synchronize()
    assert max(abs(a - b) for a, b in zip(runs['after'], runs['beside'])) < 1e-3, runs
    for pa, pb in zip(ma.parameters(), mb.parameters()): assert (pa - pb).norm() <= 1e-3 * pa.norm() + 1e-6
    for pa, pb in zip(ma.parameters(), mb.parameters()):
        if getattr(pa, 'compute_copy', None) is not None: assert (pa.compute_copy.float() - pb.compute_copy.float()).norm() <= 1e-3 * pa.norm() + 1e-6

@pytest.mark.gpu
def test_cuda_graph_training_run_overlapped_optimizer(tmp_path):
    "The trainer with cuda_graph and overlap_optimizer: loss falls, a checkpointed run resumes."
    c = TrainConfig(run_dir=str(tmp_path), batch_size=8, seq_len=128, steps=24, warmup=4, log_every=4, eval_every=12, device='cuda',
                    cuda_graph=True, overlap_optimizer=True)
    s = train(c, progress=False, stop_after=12)
    s = train(c, progress=False)
    assert s['start_step'] == 12 and s['step'] == 24
    tr = [r for r in (json.loads(l) for l in (tmp_path/'metrics.jsonl').read_text().splitlines()) if 'loss' in r]
    assert tr[-1]['loss'] < 0.8 * tr[0]['loss'], tr

@pytest.mark.gpu
def test_cuda_nan_with_the_update_launched_first(tmp_path):
    "On CUDA the trainer's AdamW skips on the device: the finite flag is read through a pinned copy while the update runs."
    c = lambda run_dir, **kw: TrainConfig(run_dir=str(run_dir), **{**SMALL, 'device': 'cuda', 'dtype': 'auto', **kw})
    guarded_nan_runs(tmp_path, c, tol=1e-3)
