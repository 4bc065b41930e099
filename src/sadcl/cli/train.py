"""``sadcl train``: stage 1 (baseline), prototypes, stage 2 (SADCL) in one command; resumable; torchrun-ready."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sadcl.config import Config


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(
        name,
        help="train baseline then SADCL (two stages, resumable)",
        description="Train the stage-1 baseline, build category prototypes from it, then train SADCL "
        "initialised from it. Model selection on the validation split; the selected model "
        "is evaluated on the test split. Run under `torchrun --nproc_per_node=N -m sadcl "
        "train ...` for several GPUs / nodes.",
        epilog="Config keys: the sections model, loss, data, optim and train of sadcl.config "
        "(ModelConfig, LossConfig, DataConfig, OptimConfig, TrainConfig; each field has a "
        "docstring). `sadcl train --print-config [--config F] [KEY=VALUE ...]` prints the "
        "resolved configuration; every run saves it as RUN/config.yaml. Overrides may come "
        "before or after the options.",
    )
    p.add_argument(
        "--config",
        default=None,
        help="YAML config (default: the packaged MOM-30 demo config, sadcl/configs/mom30_demo.yaml)",
    )
    p.add_argument(
        "--stage",
        choices=("all", "baseline", "sadcl"),
        default="all",
        help="run both stages (default) or one; 'sadcl' needs the baseline checkpoint",
    )
    p.add_argument("--resume", action="store_true", help="continue each stage from its last.pt")
    p.add_argument("--output-dir", default=None, help="run directory (overrides train.output_dir)")
    p.add_argument(
        "--baseline-checkpoint",
        default=None,
        help="stage-1 checkpoint for --stage sadcl (default: OUTPUT_DIR/baseline/best.pt)",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved configuration (config file + overrides) as YAML and exit",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. train.epochs=10 data.batch_size=16 loss.sscl_variant=official",
    )
    p.set_defaults(run=run)


def default_config_path() -> str:
    """The packaged MOM-30 demo configuration."""
    from importlib.resources import files

    return str(files("sadcl") / "configs" / "mom30_demo.yaml")


def run(args: argparse.Namespace) -> int:
    import time

    from sadcl import distributed as D
    from sadcl.config import load_config
    from sadcl.training.train import STAGES, run_training

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"train.output_dir={args.output_dir}")
    cfg = load_config(args.config or default_config_path(), overrides)
    if args.print_config:
        print(_with_class_count(cfg).to_yaml(), end="")
        return 0
    stages = STAGES if args.stage == "all" else (args.stage,)
    t0 = time.perf_counter()
    try:
        results = run_training(cfg, stages=stages, resume=args.resume, baseline_checkpoint=args.baseline_checkpoint)
        is_main = D.is_main_process()  # before cleanup: without a process group every rank answers rank 0
    finally:
        D.cleanup()
    if is_main:
        stages = tuple(s for s in stages if s in results)  # a single-stage run (e.g. model.head=linear) has one
        print_results(results, stages)
        speed = ", ".join(
            f"{s} {results[s]['train_images_per_s']:.1f}"
            for s in stages
            if isinstance((results.get(s) or {}).get("train_images_per_s"), (int, float))
        )
        print(
            f"elapsed {_minutes(time.perf_counter() - t0)} (data generation, training, evaluation)"
            + (f"; training images/s: {speed}" if speed else "")
        )
        print(f"run directory: {cfg.train.output_dir}")
    return 0


def _with_class_count(cfg: Config) -> Config:
    """``cfg`` with ``model.num_classes: null`` replaced by the training split's count, as a run will resolve it
    (left null, with a log line saying why, when the labels cannot be read without building the dataset)."""
    import dataclasses
    import logging

    from sadcl.data import training_class_count

    if cfg.model.num_classes is not None:
        return cfg
    try:
        n = training_class_count(cfg.data)
    except (OSError, ValueError) as e:
        logging.getLogger(__name__).info("model.num_classes: null = from the data when training starts (%s)", e)
        return cfg
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=n))


def print_results(results: dict, stages: tuple[str, ...] | list[str]) -> None:
    """A short table: per stage, the selected weights, the best epoch (1-based, as the log), val mAP and test mAP /
    CF1 / OF1."""
    from sadcl.training.stage_log import epoch_label

    print(f"\n{'stage':<10} {'selected':<9} {'epoch':>5} {'val mAP':>8} {'test mAP':>9} {'CF1':>6} {'OF1':>6}")
    for stage in stages:
        r = results.get(stage) or {}
        val = (r.get("val") or {}).get(r.get("selected") or "", {}) or {}
        test = r.get("test") or {}

        def f(x: float | None, width: int) -> str:
            return f"{x:{width}.2f}" if isinstance(x, (int, float)) else f"{'-':>{width}}"

        print(
            f"{stage:<10} {str(r.get('selected')):<9} {epoch_label(r.get('best_epoch')):>5} {f(val.get('mAP'), 8)} "
            f"{f(test.get('mAP'), 9)} {f(test.get('CF1'), 6)} {f(test.get('OF1'), 6)}"
        )
    for stage in stages:
        note = ((results.get(stage) or {}).get("guard") or {}).get("note")
        if note:
            print(f"{stage}: {note} (train.stage2_guard)")
    if set(stages) == {"baseline", "sadcl"}:
        print(
            "(selection on val, metrics on test at threshold 0.5; SADCL continues from the baseline, so it had both "
            "stages' epochs: `sadcl ablate` compares at equal budget)"
        )


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:04.1f} s"
