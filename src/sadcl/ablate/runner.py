"""Run an equal-budget comparison: per seed, stage 1 once, then every row; resumable run by run.

Layout of ``out``::

    seed<S>/stage1/baseline/     the seed's stage-1 run (results.json, best.pt, ...), shared by every stage-2 row
    seed<S>/stage1/prototypes.npy
    seed<S>/<row>/sadcl/         a stage-2 row (from stage 1's selected weights and prototypes)
    seed<S>/<row>/baseline/      a single-stage row
    */seconds.json               wall seconds spent on that run (summed over invocations)

Every run uses ``train.seed = S`` and the same data; selection on val only, the selected weights tested once. Stage-2
rows run with ``train.stage2_guard=false`` (stage 2 as trained); the guard's effect is computed from the stage-1 run
(:mod:`sadcl.ablate.report`). A finished run (its ``results.json`` has test metrics) is skipped; an interrupted one
continues from its ``last.pt``; a run directory trained with other settings is refused, never relabelled.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sadcl.ablate.rows import STAGE1, Row
from sadcl.config import Config, ConfigError, load_config
from sadcl.io import atomic_write_text, read_json

__all__ = ["AblationPlan", "estimate_seconds", "run_ablation", "run_config", "run_dir", "stage_dir"]

logger = logging.getLogger(__name__)

QUIET = ("train.progress=false", "train.tensorboard=false")
"""Every run of an ablation: no per-step progress bar, no TensorBoard files (the report is the output)."""
SECONDS = "seconds.json"


@dataclass
class AblationPlan:
    """What to compare: the run configuration (a YAML file and overrides), the seeds and the rows."""

    config: str | None
    overrides: list[str]
    seeds: list[int]
    rows: list[Row]
    out: Path
    extra: list[str] = field(default_factory=list)
    """Overrides applied after each row's settings (a quick smoke run's sizes)."""

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if not self.seeds:
            raise ValueError("an ablation needs at least one seed")
        keys = [r.key for r in self.rows]
        if len(set(keys)) != len(keys):
            raise ValueError(f"rows named twice: {sorted({k for k in keys if keys.count(k) > 1})}")

    @property
    def needs_stage1(self) -> bool:
        return any(r.kind == "stage2" for r in self.rows)


def run_dir(out: Path, seed: int, key: str) -> Path:
    """The run directory of a row (``stage1`` = the seed's shared stage 1)."""
    return Path(out) / f"seed{seed}" / key


def stage_dir(out: Path, seed: int, key: str, kind: str = "stage2") -> Path:
    """The directory holding ``results.json`` / ``best.pt`` of a row."""
    stage = "baseline" if key == STAGE1 or kind == "single" else "sadcl"
    return run_dir(out, seed, key) / stage


def run_config(plan: AblationPlan, seed: int, row: Row | None) -> Config:
    """The configuration of one run: the plan's config and overrides, then the row's settings (None: stage 1).

    Stage 1 and the stage-2 rows are the two stages of the config even where it trains one stage
    (``train.single_stage: true``, e.g. ``configs/own_data.yaml train.single_stage=true``): the config's own
    one-stage run is then a single-stage row (for that one the ``ml_decoder`` row).
    """
    directory = run_dir(plan.out, seed, row.key if row else STAGE1)
    ov = [*plan.overrides, *QUIET, f"train.seed={seed}", f"train.output_dir={directory}"]
    if row is None or row.kind == "stage2":
        ov.append("train.single_stage=false")
    if row is not None:
        ov += list(row.settings)
        if row.kind == "stage2":
            protos = run_dir(plan.out, seed, STAGE1) / "prototypes.npy"
            ov += [f"model.prototypes={protos}", "train.stage2_guard=false"]
    return load_config(plan.config, [*ov, *plan.extra])


def _finished(stage: Path) -> bool:
    res = read_json(stage / "results.json")
    return isinstance(res, dict) and isinstance(res.get("test"), dict)


def _add_seconds(stage: Path, seconds: float) -> None:
    total = (read_json(stage / SECONDS) or {}).get("seconds", 0.0) + seconds
    stage.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stage / SECONDS, json.dumps({"seconds": total}))


def _check_same_config(directory: Path, cfg: Config, stages: tuple[str, ...]) -> None:
    from sadcl.training.train import changed_settings, saved_run_config

    saved = directory / "config.yaml"
    if saved.is_file():
        changed = changed_settings(saved_run_config(saved), cfg, stages)
        if changed:
            raise ConfigError(
                f"{saved} was run with other settings ({'; '.join(changed)}): delete {directory} to redo it, or "
                "choose another --out"
            )


def _prototypes_current(protos: Path, checkpoint: Path, cfg: Config) -> bool:
    meta = read_json(protos.with_suffix(".json"))
    return (
        protos.is_file()
        and isinstance(meta, dict)
        and meta.get("checkpoint") == str(checkpoint)
        and meta.get("threshold") == cfg.train.prototype_threshold
        and meta.get("rule") == cfg.train.prototype_rule
        and protos.stat().st_mtime >= checkpoint.stat().st_mtime
    )


def run_stage1(plan: AblationPlan, seed: int) -> None:
    """The seed's stage 1 and its prototypes (each skipped when done)."""
    from sadcl.distributed import init_distributed
    from sadcl.training.prototypes import build_run_prototypes
    from sadcl.training.train import run_training

    directory = run_dir(plan.out, seed, STAGE1)
    cfg = run_config(plan, seed, None)
    if not cfg.model.has_label_features:
        raise ConfigError(
            f"stage-2 rows need a head with label-level features (model.head=query2label, csra, or ml_decoder with "
            f"full decoding); the config has model.head={cfg.model.head}"
        )
    _check_same_config(directory, cfg, ("baseline",))
    stage = directory / "baseline"
    if not _finished(stage):
        t0 = time.time()
        run_training(cfg, stages=("baseline",), resume=True)
        _add_seconds(stage, time.time() - t0)
    protos, best = directory / "prototypes.npy", stage / "best.pt"
    if not _prototypes_current(protos, best, cfg):  # the one prototype pass of `sadcl train`, on stage 1's best
        device = init_distributed(device=cfg.train.device).device
        build_run_prototypes(cfg, best, out=protos, device=device, reuse=False)


def run_row(plan: AblationPlan, seed: int, row: Row) -> None:
    """One row of one seed (stage 1 first when a stage-2 row needs it); skipped when finished."""
    from sadcl.training.train import run_training

    directory = run_dir(plan.out, seed, row.key)
    stage = stage_dir(plan.out, seed, row.key, row.kind)
    cfg = run_config(plan, seed, row)
    _check_same_config(directory, cfg, ("baseline",) if row.kind == "single" else ("sadcl",))
    if _finished(stage):
        return
    if row.kind == "stage2":
        run_stage1(plan, seed)
        init = stage_dir(plan.out, seed, STAGE1) / "best.pt"
        t0 = time.time()
        run_training(cfg, stages=("sadcl",), resume=True, baseline_checkpoint=init)
    else:
        t0 = time.time()  # the row's settings make it single-stage (custom_row checks)
        run_training(cfg, stages=("baseline",), resume=True)
    _add_seconds(stage, time.time() - t0)


def tasks(plan: AblationPlan) -> list[tuple[int, str]]:
    """``(seed, key)`` in order: per seed stage 1 (when needed) and every row, so each finished seed is a complete,
    paired set before the next starts."""
    out = []
    for seed in plan.seeds:
        if plan.needs_stage1:
            out.append((seed, STAGE1))
        out += [(seed, r.key) for r in plan.rows]
    return out


def estimate_seconds(plan: AblationPlan) -> dict[str, Any]:
    """A rough wall-time estimate before anything trains: the training images every run still has to go through
    (epochs x split size), at the speed of a few timed training steps of the stage-1 model on a synthetic batch.

    Returns:
        ``{"seconds", "train_images", "images_per_s", "runs_left"}``.
    """
    import dataclasses

    import torch

    from sadcl.data import build_dataset
    from sadcl.losses import build_criterion
    from sadcl.models import build_model
    from sadcl.training.engine import train_step

    cfg = run_config(plan, plan.seeds[0], None)
    train = build_dataset(cfg.data, cfg.data.train_split)
    n_train = len(train)
    n_eval = sum(len(build_dataset(cfg.data, s)) for s in (cfg.data.val_split, cfg.data.test_split) if s)
    base = cfg.train.baseline_epochs or cfg.train.epochs
    epochs = {STAGE1: base}
    for r in plan.rows:
        epochs[r.key] = base + cfg.train.epochs if r.kind == "single" else cfg.train.epochs
    kinds = {r.key: r.kind for r in plan.rows}
    images = 0
    runs_left = 0
    for seed, key in tasks(plan):
        if _finished(stage_dir(plan.out, seed, key, kinds.get(key, "stage2"))):
            continue
        runs_left += 1
        steps = epochs[key] * n_train
        if cfg.train.max_steps_per_epoch:
            steps = epochs[key] * min(n_train, cfg.train.max_steps_per_epoch * cfg.data.batch_size)
        # validation of both weights every val_interval epochs plus one test pass, at ~1/3 of a training image's cost
        evals = (2 * epochs[key] / cfg.train.val_interval + 1) * n_eval / 3
        images += steps + evals
    # The stage-1 model without hub downloads (the estimate needs a model of the right cost, not its weights).
    num_classes = cfg.model.num_classes or len(train.class_names)
    model = build_model(
        dataclasses.replace(cfg.model, contrastive=False, pretrained=False, prototypes=None, num_classes=num_classes)
    ).train()
    criterion = build_criterion(cfg.loss, contrastive=False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    b, s = cfg.data.batch_size, cfg.model.img_size
    x, y = torch.randn(b, 3, s, s), (torch.rand(b, num_classes) < 0.1).float()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        train_step(model, criterion, x, y, None, optimizer, None)  # the step every training epoch runs
        times.append(time.perf_counter() - t0)
    speed = b / min(times[1:])
    return {"seconds": images / speed, "train_images": images, "images_per_s": speed, "runs_left": runs_left}


def run_ablation(plan: AblationPlan, *, after_run: Callable[[int, int], None] | None = None) -> list[str]:
    """Train every run of the plan that is not finished.

    Args:
        plan: The comparison.
        after_run: Called with (runs done, runs in all) after each run (e.g. to rewrite the report).

    Returns:
        One line per failed run (a failed run does not stop the others; a failed stage 1 skips its seed's stage-2
        rows).
    """
    by_key = {r.key: r for r in plan.rows}
    todo = tasks(plan)
    failed: list[str] = []
    broken: set[int] = set()
    for i, (seed, key) in enumerate(todo):
        row = by_key.get(key)
        if seed in broken and (row is None or row.kind == "stage2"):
            failed.append(f"seed {seed} {key}: stage 1 failed")
            continue
        logger.info("ablation: seed %d, %s (%d/%d)", seed, key, i + 1, len(todo))
        try:
            if row is None:
                run_stage1(plan, seed)
            else:
                run_row(plan, seed, row)
        except (KeyboardInterrupt, ConfigError):
            raise
        except Exception as exc:  # one failed run must not cost the others; reported in the result and exit code
            logger.exception("seed %d %s failed", seed, key)
            failed.append(f"seed {seed} {key}: {type(exc).__name__}: {exc}")
            if row is None:
                broken.add(seed)
        if after_run is not None:
            after_run(i + 1, len(todo))
    return failed
