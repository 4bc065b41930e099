"""What a training stage reports while it runs: the epoch log line, TensorBoard scalars, metric summaries."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from sadcl.io import finite

logger = logging.getLogger(__name__)

__all__ = ["SCALAR_METRICS", "StageLog", "StepHook", "epoch_label", "prototype_summary", "scalars"]

StepHook = Callable[[str, int, int], None]
"""Called as ``hook(stage, epoch, steps_done_in_epoch)`` after every optimizer step (and after any mid-epoch save)."""

SCALAR_METRICS = (
    "mAP",
    "CP",
    "CR",
    "CF1",
    "CF1_mean_per_class",
    "OP",
    "OR",
    "OF1",
    "CP_top3",
    "CR_top3",
    "CF1_top3",
    "OP_top3",
    "OR_top3",
    "OF1_top3",
)
"""The metrics of ``sadcl.training.engine.evaluate`` kept in metrics.json / results.json (JSON-safe floats)."""


def epoch_label(epoch: object) -> str:
    """An epoch as every message shows it: 1-based, as the log's ``epoch 3/10`` (files keep the 0-based index:
    metrics.json ``epoch``, results.json ``best_epoch``, a checkpoint's ``epoch``). -1 (the stage-2 guard kept the
    weights stage 2 started from) is ``start``; anything else unknown is ``-``."""
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < -1:
        return "-"
    return "start" if epoch == -1 else str(epoch + 1)


def scalars(summary: dict[str, Any]) -> dict[str, float | None]:
    """The :data:`SCALAR_METRICS` of an evaluation summary, NaN / infinity as None."""
    return {k: finite(summary[k]) for k in SCALAR_METRICS if k in summary}


def prototype_summary(prototypes: Tensor, class_names: list[str]) -> dict[str, Any]:
    """Prototype health for metrics.json: the zero and near-zero rows by class name, and the median row norm."""
    from sadcl.training.prototypes import prototype_health

    h = prototype_health(prototypes, class_names)
    return {"zero": h["zero"], "near_zero": h["near_zero"], "median_norm": h["median_norm"]}


class StageLog:
    """The epoch log line and the TensorBoard scalars of one stage (a no-op on ranks other than 0).

    Args:
        stage: The stage name (the prefix of every TensorBoard tag).
        tb_dir: Where the TensorBoard event files go.
        epochs: The stage's epoch count (for ``epoch 3/10``).
        enabled: False on non-main ranks: nothing is logged or written.
        tensorboard: Write TensorBoard scalars.
    """

    def __init__(self, stage: str, tb_dir: Path, *, epochs: int, enabled: bool, tensorboard: bool) -> None:
        self.stage = stage
        self.epochs = epochs
        self.enabled = enabled
        self.writer = _tensorboard(tb_dir) if enabled and tensorboard else None

    def train_step(self, global_step: int, values: dict[str, float], lr: float) -> None:
        """The running train losses and the learning rate at one optimizer step."""
        if self.writer is None:
            return
        for k, v in values.items():
            self.writer.add_scalar(f"{self.stage}/train/{k}", v, global_step)
        self.writer.add_scalar(f"{self.stage}/train/lr", lr, global_step)

    def epoch(self, row: dict[str, Any], *, improved: bool, validated: bool = True) -> None:
        """One metrics.json row: TensorBoard scalars and the ``loss, val mAP`` log line (``*`` = new best).

        ``validated=False``: an epoch ``train.val_interval`` did not score on val."""
        if not self.enabled:
            return
        epoch, stage = row["epoch"], self.stage
        if self.writer is not None:
            for k, v in row["train"].items():
                self.writer.add_scalar(f"{stage}/train_epoch/{k}", v, epoch)
            for k in ("zero", "near_zero") if "prototypes" in row else ():
                self.writer.add_scalar(f"{stage}/prototypes/{k}_rows", len(row["prototypes"][k]), epoch)
            for which in ("regular", "ema"):
                for k, v in row.get("val", {}).get(which, {}).items():
                    self.writer.add_scalar(f"{stage}/val_{which}/{k}", v, epoch)
            self.writer.flush()
        val_txt = (
            f"val mAP {row['val']['regular']['mAP']:.2f} (EMA {row['val']['ema']['mAP']:.2f})"
            if "val" in row
            else ("no val split" if validated else "not validated (train.val_interval)")
        )
        logger.info(
            "%s epoch %d/%d: loss %.4f, %s%s",
            stage,
            epoch + 1,
            self.epochs,
            row["train"].get("loss", 0.0),
            val_txt,
            " *" if improved and "val" in row else "",
        )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _tensorboard(path: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but keep training if an environment lacks it
        logger.warning("tensorboard is not installed; no TensorBoard logs")
        return None
    return SummaryWriter(str(path))
