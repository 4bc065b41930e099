"""Speed of the demo's real training loop (loader included) under the loop settings, as ratios measured in one run.

Usage:
    python benchmarks/bench_demo_loop.py               # 5 reps of 20 steps per setting (about 4 minutes on 2 CPU cores)
    python benchmarks/bench_demo_loop.py --reps 1 --steps 3   # a smoke run

Each setting is ``configs/mom30_demo.yaml``'s stage 1 (random weights, batch 16) with some options changed, built by
``build_stage`` as a run builds it, and timed as ``train_one_epoch`` over ``--steps`` steps from its own loader, in
turn rep by rep (``_common.interleaved_times``); the ratio is the first setting's median over the setting's.
The first setting has the loop settings of the morning's demo of 2026-12-03 (images read from the files by 2 loader
workers, BatchNorm not folded, the per-tensor AdamW loop), at today's stride 16 like the others. Code-level changes
of the same day (the in-place EMA update, the cheaper per-item seeding) are in every setting. MOM-30 is generated on
first use. It prints and writes nothing else (BENCHMARKS.md section ``demo_recipe`` quotes its ratios).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, interleaved_times, machine_line, median  # noqa: E402
from sadcl import distributed as D  # noqa: E402
from sadcl.config import load_config  # noqa: E402
from sadcl.training.engine import train_one_epoch  # noqa: E402
from sadcl.training.stage_build import build_stage  # noqa: E402
from sadcl.training.train import stage_config  # noqa: E402

OFF = ["data.cache_images=false", "data.workers=2", "model.fold_frozen_bn=false", "optim.fused=false"]
# name -> overrides of the demo config, applied after OFF.
SETTINGS: dict[str, list[str]] = {
    "files, 2 workers (morning loop)": [],
    "data.cache_images, 0 workers": ["data.cache_images=true", "data.workers=0"],
    "+ model.fold_frozen_bn": ["data.cache_images=true", "data.workers=0", "model.fold_frozen_bn=true"],
    "+ optim.fused (demo)": [
        "data.cache_images=true",
        "data.workers=0",
        "model.fold_frozen_bn=true",
        "optim.fused=true",
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed call")
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    info = D.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    fns = {}
    batch = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, overrides) in enumerate(SETTINGS.items()):
            cfg = load_config(
                REPO_ROOT / "configs" / "mom30_demo.yaml",
                ["model.pretrained=false", "train.progress=false", *OFF, *overrides],
            )
            torch.manual_seed(0)
            stage = build_stage(stage_config(cfg, "baseline"), Path(tmp) / str(i), info=info)
            batch = cfg.data.batch_size
            epoch = iter(range(1, 10**6))

            def one(stage=stage, epoch=epoch) -> None:
                stage.train_sampler.set_epoch(next(epoch))  # fresh batches every call, as a run sees them
                train_one_epoch(
                    stage.train_model,
                    stage.criterion,
                    stage.train_loader,
                    stage.optimizer,
                    stage.scheduler,
                    device="cpu",
                    epoch=0,
                    ema=stage.ema,
                    max_steps=args.steps,
                )

            fns[name] = one
        times = interleaved_times(fns, reps=args.reps, warmup=args.warmup)
    first = median(next(iter(times.values())))
    print(machine_line())
    for name, t in times.items():
        per_step = median(t) / args.steps
        print(f"{name:30s} {per_step * 1000:7.1f} ms/step  {batch / per_step:6.1f} images/s  {first / median(t):5.2f}x")


if __name__ == "__main__":
    main()
