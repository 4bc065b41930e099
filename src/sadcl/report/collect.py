"""What a report is built from: a checkpoint's logits on a split, scored exactly as ``sadcl evaluate`` scores them.

:func:`score_model` scores each split of a model opened by :func:`sadcl.inference.open.open_model` with
:func:`sadcl.training.engine.score_split`, as ``sadcl evaluate`` does, so the report's numbers are
``sadcl evaluate``'s. The report works on the logits (calibration needs them unsaturated); probabilities are
``sadcl.inference.postprocess.probabilities`` of them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["ModelRun", "SplitOutputs", "checkpoint_info", "score_model"]


@dataclass
class SplitOutputs:
    """One model's outputs on one split, in dataset order."""

    logits: np.ndarray
    """[N, C] float32."""
    targets: np.ndarray
    """[N, C] float32 (0 at unknown entries)."""
    ignore: np.ndarray | None
    """[N, C] bool, True = unknown label; None when every label is known."""
    paths: list[str] = field(default_factory=list)
    """The N image files (empty for synthetic data)."""

    def __post_init__(self) -> None:
        if self.logits.ndim != 2 or self.logits.shape != self.targets.shape:
            raise ValueError(
                f"logits and targets must both be [N, C], got {self.logits.shape} and {self.targets.shape}"
            )
        if self.ignore is not None and self.ignore.shape != self.targets.shape:
            raise ValueError(f"ignore must be [N, C] like the targets, got {self.ignore.shape}")
        if self.paths and len(self.paths) != len(self.logits):
            raise ValueError(f"{len(self.paths)} paths for {len(self.logits)} rows of logits")


@dataclass
class ModelRun:
    """A model to report on: its name, what the checkpoint says about it, its test outputs and (optionally) val."""

    name: str
    info: dict[str, Any]
    """:func:`checkpoint_info` (stage, selected weights, recipe)."""
    test: SplitOutputs
    val: SplitOutputs | None = None


def checkpoint_info(trained: Any) -> dict[str, Any]:
    """The summary facts of an opened checkpoint: stage, epoch, the weights used, and the recipe's main settings.

    Args:
        trained: A :class:`sadcl.inference.open.TrainedModel`.
    """
    cfg = trained.config.to_dict()
    model, loss, train, data = (cfg.get(k) or {} for k in ("model", "loss", "train", "data"))
    contrastive = bool(model.get("contrastive"))
    recipe = {
        "method": trained.config.model.method,  # which head and objective: reports compare heads
        "backbone": model.get("backbone"),
        "img_size": model.get("img_size"),
        "contrastive": model.get("contrastive"),
        "prototype_momentum": model.get("prototype_momentum"),
        "single_stage": train.get("single_stage") or None,  # shown when true
        "dataset": data.get("format"),
        "epochs": train.get("epochs"),
        "loss_weights": {  # SSCL and PSCL only where the model trained them
            k[len("weight_") :]: loss[k]
            for k in ("weight_asl", *(("weight_sscl", "weight_pscl") if contrastive else ()))
            if k in loss
        },
        "gamma_neg": loss.get("gamma_neg"),
    }
    return {
        "stage": trained.info.get("stage"),
        "epoch": trained.info.get("epoch"),
        "weights": trained.weights,
        "selected_on_val": trained.info.get("selected"),
        "recipe": {k: v for k, v in recipe.items() if v not in (None, {})},
    }


def score_model(
    trained: Any,
    splits: Sequence[str],
    *,
    device: str = "auto",
    batch_size: int | None = None,
    workers: int | None = None,
    amp: bool = False,
) -> tuple[dict[str, SplitOutputs], list[str]]:
    """Score splits of an opened model's dataset, the way ``sadcl evaluate`` does.

    Args:
        trained: A :class:`sadcl.inference.open.TrainedModel` (a checkpoint or a model directory).
        splits: Splits to score.
        device: ``auto``, ``cpu``, ``cuda``, ...; the model stays there (the examples run it again).
        batch_size: Default: ``data.eval_batch_size`` (or ``data.batch_size``).
        workers: Loader processes (default: ``data.workers``).
        amp: Autocast on CUDA.

    Returns:
        ``({split: outputs}, class_names)``.
    """
    from sadcl import distributed as D
    from sadcl.training.engine import score_split

    model, class_names = trained.torch_model("sadcl report"), trained.class_names
    outputs: dict[str, SplitOutputs] = {}
    dist = D.init_distributed(device=device)
    try:
        for split in splits:
            result, dataset = score_split(
                model,
                trained.config,
                split,
                device=dist.device,
                class_names=class_names,
                amp=amp,
                batch_size=batch_size,
                workers=workers,
            )
            class_names = class_names or list(dataset.class_names)
            ignore = result["ignore"].numpy()
            outputs[split] = SplitOutputs(
                logits=result["logits"].numpy(),
                targets=result["targets"].numpy(),
                ignore=ignore if ignore.any() else None,
                paths=list(dataset.paths),
            )
            logger.info("%s on %s: %d images, mAP %.2f", trained.path, split, len(dataset), result["mAP"])
    finally:
        D.cleanup()
    return outputs, class_names
