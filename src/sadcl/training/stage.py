"""One training stage in named steps: build, resume, fit, select_checkpoint (model selection on val), evaluate_test
(docs/spec.md §3).

:func:`train_stage` runs them in order on one stage directory::

    stage_dir/
      config.yaml     the stage's effective configuration (see ``sadcl.training.train.stage_config``)
      last.pt         resume state (``finished`` once the results exist)
      best.pt         the best val epoch's regular and EMA weights, ``selected`` = the better of the two
      metrics.json    one row per epoch (train losses, lr, val metrics of both weights when validated, prototype health)
      results.json    the selected model's test metrics
      tb/             TensorBoard logs

Under ``torchrun`` every rank runs every step (the collectives inside them need all ranks); rank 0 alone writes.
Exact resume: the steps consume the random streams in the order of an uninterrupted run, and ``last.pt`` holds the
generator states of every rank, restored after the model is built.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sadcl import distributed as D
from sadcl.checkpoint import gather_rng_state, load_checkpoint, save_checkpoint, selected_weights, set_rng_state
from sadcl.config import Config
from sadcl.io import atomic_write_text, finite, read_json
from sadcl.training.engine import evaluate, train_one_epoch
from sadcl.training.stage_build import Stage, build_stage
from sadcl.training.stage_log import StageLog, StepHook, epoch_label, prototype_summary, scalars

logger = logging.getLogger(__name__)

__all__ = [
    "Stage",
    "StageProgress",
    "build_stage",
    "evaluate_test",
    "fit",
    "guard_start",
    "resume_stage",
    "select_checkpoint",
    "train_stage",
]


@dataclass
class StageProgress:
    """Where a stage stands: the next epoch and step, the best val epoch so far and the per-epoch history."""

    start_epoch: int = 0
    start_step: int = 0
    best: dict[str, Any] = field(default_factory=lambda: {"score": -math.inf, "epoch": -1, "selected": None})
    """``{"score": val mAP, "epoch", "selected": "ema" | "regular"}``."""
    history: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str = "completed"
    start_val: dict[str, Any] | None = None
    """Stage 2 with ``train.stage2_guard``: the val metrics of the weights it started from (epoch -1 of ``best``)."""


def train_stage(
    cfg: Config,
    stage_dir: str | Path,
    *,
    info: D.DistInfo | None = None,
    resume: bool = False,
    init_weights: str | Path | None = None,
    hook: StepHook | None = None,
) -> dict[str, Any]:
    """Train, select on val and test one stage; see the module docstring for the files it writes.

    Args:
        cfg: The stage's configuration (see ``sadcl.training.train.stage_config``).
        stage_dir: Where this stage's files go.
        info: From :func:`sadcl.distributed.init_distributed` (made here when None).
        resume: Continue from ``stage_dir/last.pt`` when it exists.
        init_weights: A stage-1 checkpoint to start from (stage 2): strict on every non-contrastive weight.
        hook: See :data:`sadcl.training.stage_log.StepHook`.

    Returns:
        ``{"best_epoch", "selected", "epochs_run", "val", "test", "test_per_class_AP", ...}`` (``test``: the selected
        weights only).
    """
    info = info or D.init_distributed(device=cfg.train.device)
    stage_dir = Path(stage_dir)
    last_path = stage_dir / "last.pt"
    if last_path.is_file() and not resume:
        raise FileExistsError(
            f"{last_path} exists: pass --resume to continue that run, or choose another "
            "train.output_dir (nothing was overwritten)"
        )
    ck = load_checkpoint(last_path) if resume and last_path.is_file() else None
    if ck is not None and ck.get("finished"):
        logger.info("%s: already finished (%s); reusing its results", stage_dir.name, last_path)
        return read_json(stage_dir / "results.json") if info.is_main else {}
    if info.is_main:
        stage_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(stage_dir / "config.yaml")

    D.seed_everything(cfg.train.seed, rank=info.rank)
    st = build_stage(cfg, stage_dir, info=info, init_weights=init_weights)
    progress = resume_stage(st, ck)  # after the build: the model's random init is drawn before the RNG is restored
    if ck is None and init_weights is not None and cfg.train.stage2_guard:
        guard_start(st, progress)
    progress = fit(st, progress, hook=hook)
    results = select_checkpoint(st, progress)
    return evaluate_test(st, results)


# ------------------------------------------------------------------------------------------------------------ resume
def resume_stage(st: Stage, ck: dict[str, Any] | None) -> StageProgress:
    """Load a ``last.pt`` state into the built stage (weights, optimizer, scheduler, EMA, scaler, RNG streams).

    Returns:
        The progress to continue from; a fresh one without ``ck``.
    """
    if ck is None:
        return StageProgress()
    st.model.load_state_dict(ck["model"])
    st.optimizer.load_state_dict(ck["optimizer"])
    st.scheduler.load_state_dict(ck["scheduler"])
    st.ema.load_state_dict(ck["ema"])
    st.ema.updates = int(ck.get("ema_updates", 0))
    if st.scaler is not None and ck.get("scaler"):
        st.scaler.load_state_dict(ck["scaler"])
    set_rng_state(ck["rng"], st.info.rank)
    progress = StageProgress(
        start_epoch=int(ck["epoch"]),
        start_step=int(ck["step"]),
        best=dict(ck["best"]),
        history=list(ck["history"]),
        start_val=ck.get("start_val"),
    )
    if ck["epoch_done"]:
        progress.start_epoch, progress.start_step = progress.start_epoch + 1, 0
    logger.info(
        "%s: resumed from %s at epoch %s step %d",
        st.name,
        st.last_path,
        epoch_label(progress.start_epoch),
        progress.start_step + 1,
    )
    return progress


# ------------------------------------------------------------------------------------------------------------- guard
def guard_start(st: Stage, progress: StageProgress) -> None:
    """The stage-2 guard (``train.stage2_guard``): score the weights stage 2 starts from on val and make them the
    best so far (epoch -1, written to ``best.pt``), so a stage 2 that never beats them ships them.

    The random streams are restored afterwards, so a guarded run trains exactly as an unguarded one.
    """
    if st.val_loader is None:
        return
    with torch.random.fork_rng(devices=[st.info.device] if st.info.device.type == "cuda" else []):
        start = scalars(evaluate(st.model, st.val_loader, device=st.info.device, amp=st.use_amp))
    progress.start_val = start
    progress.best = {"score": start["mAP"], "epoch": -1, "selected": "regular"}
    if st.info.is_main:
        _save_best(st, progress, {"epoch": -1, "val": {"regular": start, "selected": "regular"}})
    logger.info("%s: the weights it starts from score val mAP %.2f (train.stage2_guard)", st.name, start["mAP"])


def _resume_state(st: Stage, progress: StageProgress, epoch: int, step: int, *, epoch_done: bool, finished: bool):
    """The ``last.pt`` dict; collective (it gathers every rank's RNG state), so every rank calls it."""
    return {
        "model": st.model.state_dict(),
        "ema": st.ema.state_dict(),
        "ema_updates": st.ema.updates,
        "optimizer": st.optimizer.state_dict(),
        "scheduler": st.scheduler.state_dict(),
        "scaler": st.scaler.state_dict() if st.scaler else None,
        "rng": gather_rng_state(),
        "config": st.cfg.to_dict(),
        "class_names": st.class_names,
        "stage": st.name,
        "epoch": epoch,
        "step": step,
        "epoch_done": epoch_done,
        "finished": finished,
        "best": progress.best,
        "history": progress.history,
        "start_val": progress.start_val,
    }


def _save_last(st: Stage, progress: StageProgress, epoch: int, step: int, *, epoch_done: bool) -> None:
    snapshot = _resume_state(st, progress, epoch, step, epoch_done=epoch_done, finished=False)  # every rank
    if st.info.is_main:
        save_checkpoint(snapshot, st.last_path)


# --------------------------------------------------------------------------------------------------------------- fit
def fit(st: Stage, progress: StageProgress, *, hook: StepHook | None = None) -> StageProgress:
    """Train the remaining epochs: one epoch, validation of both weights (every ``train.val_interval`` epochs and
    the last), ``best.pt`` / ``last.pt``, early stop."""
    tcfg = st.cfg.train
    log = StageLog(
        st.name, st.stage_dir / "tb", epochs=tcfg.epochs, enabled=st.info.is_main, tensorboard=tcfg.tensorboard
    )
    for epoch in range(progress.start_epoch, tcfg.epochs):
        if _early_stop(tcfg.early_stop_patience, progress.best["epoch"], _last_validated(progress)):
            progress.stop_reason = f"early stop: no val improvement since epoch {epoch_label(progress.best['epoch'])}"
            break
        st.train_sampler.set_epoch(epoch)
        first_step = progress.start_step if epoch == progress.start_epoch else 0

        def log_fn(step: int, values: dict[str, float], epoch: int = epoch) -> None:
            done = step + 1
            if done % tcfg.log_interval == 0:
                log.train_step(epoch * st.steps + done, values, st.optimizer.param_groups[0]["lr"])
            if tcfg.checkpoint_interval and done % tcfg.checkpoint_interval == 0 and done < st.steps:
                _save_last(st, progress, epoch, done, epoch_done=False)
            if hook is not None:
                hook(st.name, epoch, done)

        t_epoch = time.perf_counter()
        train_stats = train_one_epoch(
            st.train_model,
            st.criterion,
            st.train_loader,
            st.optimizer,
            st.scheduler,
            device=st.info.device,
            epoch=epoch,
            ema=st.ema,
            scaler=st.scaler,
            amp=st.use_amp,
            clip_grad_norm=st.cfg.optim.clip_grad_norm,
            max_steps=st.steps,
            progress=tcfg.progress and st.info.is_main,
            log_fn=log_fn,
            start_step=first_step,
            grad_probe_interval=tcfg.grad_probe_interval,
            stage_steps=tcfg.epochs * st.steps,
        )
        train_seconds = time.perf_counter() - t_epoch
        train_stats = {k: v for k, v in D.reduce_means(train_stats).items() if math.isfinite(v)}
        row: dict[str, Any] = {
            "epoch": epoch,
            "train": train_stats,
            "lr": st.optimizer.param_groups[0]["lr"],
            "train_seconds": train_seconds,
            # Images trained on: a batch holds at most the rank's share of the split (a batch larger than the split
            # is one smaller batch, not batch_size images).
            "train_images": (st.steps - first_step)
            * min(st.cfg.data.batch_size, len(st.train_sampler))
            * st.info.world_size,
        }
        if st.cfg.model.contrastive and hasattr(st.model, "prototypes"):
            row["prototypes"] = prototype_summary(st.model.prototypes.detach(), st.class_names)
        # train.val_interval; always after the last epoch (without a val split there is nothing to skip)
        due = (epoch + 1) % tcfg.val_interval == 0 or epoch + 1 == tcfg.epochs or st.val_loader is None
        improved = _validate(st, progress, row) if due else False
        progress.history.append(row)
        if st.info.is_main:
            if improved:
                _save_best(st, progress, row)
            atomic_write_text(st.stage_dir / "metrics.json", json.dumps(progress.history, indent=2))
            log.epoch(row, improved=improved, validated=due)
        _save_last(st, progress, epoch, st.steps, epoch_done=True)
    log.close()
    return progress


def _validate(st: Stage, progress: StageProgress, row: dict[str, Any]) -> bool:
    """Score both weights on val into ``row["val"]`` and update ``progress.best``; True when this epoch is the best."""
    epoch = row["epoch"]
    if st.val_loader is None:
        # No validation split: keep the last epoch. A constant-decay EMA started from random weights is mostly
        # that random start after a short run (0.9998^1000 = 0.82), so it is used only when warmed up.
        selected = "ema" if st.cfg.train.ema_warmup else "regular"
        progress.best = {"score": math.nan, "epoch": epoch, "selected": selected}
        return True
    device = st.info.device
    reg = scalars(evaluate(st.model, st.val_loader, device=device, amp=st.use_amp))
    emv = scalars(evaluate(st.ema.module, st.val_loader, device=device, amp=st.use_amp))
    selected = "ema" if emv["mAP"] > reg["mAP"] else "regular"  # the better of the two, as official
    score = max(reg["mAP"], emv["mAP"])
    row["val"] = {"regular": reg, "ema": emv, "selected": selected}
    if score > progress.best["score"]:
        progress.best = {"score": score, "epoch": epoch, "selected": selected}
        return True
    return False


def _save_best(st: Stage, progress: StageProgress, row: dict[str, Any]) -> None:
    state = {
        "model": st.model.state_dict(),
        "ema": st.ema.state_dict(),
        "selected": progress.best["selected"],
        "config": st.cfg.to_dict(),
        "class_names": st.class_names,
        "stage": st.name,
        "epoch": row["epoch"],
        "metrics": row,
    }
    save_checkpoint(state, st.best_path)


def _early_stop(patience: int | None, best_epoch: int, last_epoch: int) -> bool:
    """Official rule: stop once the last validated epoch is more than ``patience`` epochs past the best."""
    return patience is not None and best_epoch >= 0 and last_epoch - best_epoch > patience


def _last_validated(progress: StageProgress) -> int:
    """The last epoch scored on val (``train.val_interval`` skips some); -1 before any."""
    return next((int(r["epoch"]) for r in reversed(progress.history) if "val" in r), -1)


# ------------------------------------------------------------------------------------------------------------ select
def select_checkpoint(st: Stage, progress: StageProgress) -> dict[str, Any]:
    """Write the finished resume state aside and summarise the selection (the best val epoch, which weights).

    The finished state (last weights) is written to ``last.pt.finished`` now, before :func:`evaluate_test` loads the
    selected weights into the model, and is put in place only once the results exist.

    Returns:
        The stage results without the test metrics.
    """
    history, best = progress.history, progress.best
    final = _resume_state(
        st, progress, history[-1]["epoch"] if history else -1, st.steps, epoch_done=True, finished=True
    )
    if st.info.is_main:
        save_checkpoint(final, _finished_path(st))
    del final
    seconds = sum(r.get("train_seconds", 0.0) for r in history)
    images = sum(r.get("train_images", 0) for r in history)
    if st.cfg.data.val_split:
        selection = "better of regular / EMA on val at the best val epoch"
    else:
        why = "(EMA with warm-up)" if best["selected"] == "ema" else "(the EMA is used only with train.ema_warmup=true)"
        selection = f"no validation split: last epoch, {best['selected']} weights {why}"
    results = {
        "best_epoch": best["epoch"],
        "selected": best["selected"],
        "epochs_run": len(history),
        "stop_reason": progress.stop_reason,
        "train_seconds": seconds,
        "selection": selection,
        "train_images_per_s": images / seconds if seconds > 0 else None,
        "val": next((r.get("val") for r in history if r["epoch"] == best["epoch"]), None),
    }
    if progress.start_val is not None:
        results["guard"] = _guard_summary(st, progress)
        if best["epoch"] < 0:
            results["val"] = {"regular": progress.start_val, "selected": "regular"}
            results["selection"] = results["guard"]["note"]
    return results


def _guard_summary(st: Stage, progress: StageProgress) -> dict[str, Any]:
    """What the stage-2 guard decided: the start's val mAP, stage 2's best epoch and val mAP, which one ships."""
    own = [
        (r["epoch"], max(r["val"]["regular"]["mAP"], r["val"]["ema"]["mAP"])) for r in progress.history if "val" in r
    ]
    epoch, score = max(own, key=lambda x: x[1]) if own else (None, math.nan)
    kept = progress.best["epoch"] < 0
    start = progress.start_val["mAP"]
    if kept:
        note = (
            f"stage-2 guard: no stage-2 epoch beat the weights it started from on val (best stage-2 val mAP "
            f"{score:.2f} at epoch {epoch + 1 if epoch is not None else '-'} vs {start:.2f}): the stage-1 weights ship"
        )
        if st.info.is_main:
            logger.warning("%s: %s", st.name, note)
    else:
        note = (
            f"stage-2 guard: stage 2 beat the weights it started from on val ({progress.best['score']:.2f} vs "
            f"{start:.2f})"
        )
    return {
        "start_val_mAP": start,
        "stage2_best_epoch": epoch,
        "stage2_best_val_mAP": score if own else None,
        "kept_start": kept,
        "note": note,
    }


def _finished_path(st: Stage) -> Path:
    return st.last_path.with_name(st.last_path.name + ".finished")


# -------------------------------------------------------------------------------------------------------------- test
def evaluate_test(st: Stage, results: dict[str, Any]) -> dict[str, Any]:
    """Test the selected weights of the best val epoch once (the other weights never see the test split), then finish.

    Returns:
        ``results`` with ``test`` and ``test_per_class_AP`` added (when the stage has a test split); also written to
        ``results.json``, after which ``last.pt`` is marked finished.
    """
    D.barrier()
    best_state = load_checkpoint(st.best_path)
    if st.test_loader is not None:
        st.model.load_state_dict(selected_weights(best_state, use_ema=results["selected"] == "ema"))
        summary = evaluate(st.model, st.test_loader, device=st.info.device, amp=st.use_amp)
        results["test"] = scalars(summary)
        results["test_per_class_AP"] = {n: finite(a) for n, a in zip(st.class_names, summary["per_class_AP"])}
    if st.info.is_main:
        atomic_write_text(st.stage_dir / "results.json", json.dumps(results, indent=2))
        # Finished only once the results are on disk: an interrupted test evaluation is redone by --resume. The
        # rename is of a file already written whole (save_checkpoint), so last.pt is never partial.
        os.replace(_finished_path(st), st.last_path)
        if "test" in results:
            logger.info(
                "%s: selected %s weights of epoch %s; test mAP %.2f CF1 %.2f OF1 %.2f",
                st.name,
                results["selected"],
                epoch_label(results["best_epoch"]),
                results["test"]["mAP"],
                results["test"]["CF1"],
                results["test"]["OF1"],
            )
    return results
