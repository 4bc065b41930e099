"""Speed of the demo's SADCL training step under model variants, as ratios measured in one run.

Usage:
    python benchmarks/bench_demo_variants.py              # 5 timed reps per variant (about 3 minutes on 2 CPU cores)
    python benchmarks/bench_demo_variants.py --reps 1     # a smoke run

Each variant is ``configs/mom30_demo.yaml``'s model with some fields changed (random weights, batch 32, channels_last),
timed in turn rep by rep (``_common.interleaved_times``); the ratio is the baseline's median step time over the
variant's. It prints and writes nothing else (BENCHMARKS.md section ``demo_recipe`` quotes its ratios).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, interleaved_times, machine_line, median  # noqa: E402
from bench_speed import TrainStep  # noqa: E402
from sadcl.config import load_config  # noqa: E402
from sadcl.training.engine import place_model  # noqa: E402

# name -> ModelConfig fields changed from the demo config of 2026-12-02 (dropout 0.1, FFN 1024).
VARIANTS: dict[str, dict] = {
    "dropout 0.1, FFN 1024": {"dropout": 0.1, "dim_feedforward": 1024},
    "dropout 0": {"dropout": 0.0, "dim_feedforward": 1024},
    "dropout 0, FFN 512 (demo)": {"dropout": 0.0, "dim_feedforward": 512},
    "demo + freeze_stride 16": {"dropout": 0.0, "dim_feedforward": 512, "freeze_stride": 16},
    "demo at 96 px": {"dropout": 0.0, "dim_feedforward": 512, "img_size": 96},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    cfg = load_config(REPO_ROOT / "configs" / "mom30_demo.yaml")
    steps = {}
    for name, fields in VARIANTS.items():
        model_cfg = dataclasses.replace(cfg.model, contrastive=True, prototypes=None, pretrained=False, **fields)
        step = TrainStep(model_cfg=model_cfg, loss_cfg=cfg.loss, optim_cfg=cfg.optim, batch=32)
        place_model(step.model, device="cpu", channels_last=True)
        step.images = step.images.contiguous(memory_format=torch.channels_last)
        steps[name] = step
    times = interleaved_times(steps, reps=args.reps, warmup=args.warmup)
    first = median(next(iter(times.values())))
    print(machine_line())
    for name, t in times.items():
        print(f"{name:28s} {median(t) * 1000:7.1f} ms/step  {32 / median(t):6.1f} images/s  {first / median(t):5.2f}x")


if __name__ == "__main__":
    main()
