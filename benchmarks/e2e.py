"""End-to-end training speed on one GPU: pithtrain vs HF transformers' Qwen3-MoE, same config and batch, same run.

Presets `small` (8 x 2048) and `qwen3-30b-a3b-6l` (4 x 4096). pithtrain trains with the trainer's step (bf16 autocast
over fp32 master weights, clipping, fused AdamW, router bias update); HF as shared/reference/hf_anchor.py (bf16 weights,
grouped_mm experts, fused AdamW). Reports tokens/s (median step, CUDA events, no host sync between steps), MFU vs
989 TFLOP/s, peak and activation memory; `--profile` adds a per-component breakdown, `--compile` a torch.compile variant.
The code lives in pithtrain/bench.py (nbs/31_bench.ipynb); `pithtrain bench` runs the same.

    python3 benchmarks/e2e.py --profile --compile   # GPU: benchmarks/results/e2e-DATE.json, e2e-profile-DATE.json (+ $OUT/)
    python3 benchmarks/e2e.py --cpu-smoke           # tiny preset on CPU: checks the logic only
"""
import os, sys
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.chdir(ROOT)   # results go to benchmarks/results of this checkout
from pithtrain.bench import bench_main

if __name__ == '__main__': bench_main(sys.argv[1:], prog='python3 benchmarks/e2e.py')
