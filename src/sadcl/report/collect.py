"""What a report is built from: a checkpoint's logits on a split, scored exactly as ``sadcl evaluate`` scores them.

:func:`score_checkpoint` uses the same pieces in the same way as ``sadcl evaluate`` (``checkpoint.load_model``,
``build_dataset`` with the checkpoint's class list and the evaluation transform, ``build_loader`` and
``engine.evaluate``), so the report's numbers are ``sadcl evaluate``'s. The report works on the logits (calibration
needs them unsaturated); probabilities are ``sadcl.inference.postprocess.probabilities`` of them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["ModelRun", "SplitOutputs", "checkpoint_info", "score_checkpoint"]


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


def checkpoint_info(state: dict[str, Any], *, use_ema: bool | None) -> dict[str, Any]:
    """The summary facts of a loaded checkpoint: stage, epoch, the weights used, and the recipe's main settings."""
    cfg = state.get("config") or {}
    model, loss, train, data = (cfg.get(k) or {} for k in ("model", "loss", "train", "data"))
    if use_ema is None:
        weights = "ema" if state.get("selected", "ema") == "ema" and state.get("ema") is not None else "regular"
    else:
        weights = "ema" if use_ema and state.get("ema") is not None else "regular"
    recipe = {
        "backbone": model.get("backbone"),
        "img_size": model.get("img_size"),
        "contrastive": model.get("contrastive"),
        "dataset": data.get("format"),
        "epochs": train.get("epochs"),
        "loss_weights": {
            k[len("weight_") :]: loss[k] for k in ("weight_asl", "weight_sscl", "weight_pscl") if k in loss
        },
        "gamma_neg": loss.get("gamma_neg"),
    }
    return {
        "stage": state.get("stage"),
        "epoch": state.get("epoch"),
        "weights": weights,
        "selected_on_val": state.get("selected"),
        "recipe": {k: v for k, v in recipe.items() if v not in (None, {})},
    }


def score_checkpoint(
    checkpoint: str,
    splits: Sequence[str],
    *,
    data_root: str | None = None,
    use_ema: bool | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    workers: int | None = None,
    amp: bool = False,
) -> tuple[dict[str, SplitOutputs], dict[str, Any], Any, list[str]]:
    """Score splits of a checkpoint's dataset, the way ``sadcl evaluate`` does.

    Args:
        checkpoint: Checkpoint file from ``sadcl train``.
        splits: Splits to score (the model is loaded once).
        data_root: Dataset directory (default: the checkpoint's ``data.root``).
        use_ema: See :func:`sadcl.checkpoint.selected_weights`.
        device: ``auto``, ``cpu``, ``cuda``, ...
        batch_size: Default: ``data.eval_batch_size`` (or ``data.batch_size``).
        workers: Loader processes (default: ``data.workers``).
        amp: Autocast on CUDA.

    Returns:
        ``({split: outputs}, info, (model, config, transform), class_names)``; the model stays on the device (the
        examples run it again).
    """
    from sadcl import distributed as D
    from sadcl.checkpoint import load_checkpoint, load_model
    from sadcl.data import build_dataset, build_loader
    from sadcl.data.transforms import build_eval_transform
    from sadcl.training.engine import evaluate

    info = checkpoint_info(load_checkpoint(checkpoint), use_ema=use_ema)
    model, config, class_names = load_model(checkpoint, use_ema=use_ema, data_root=data_root)
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    transform = build_eval_transform(config)
    outputs: dict[str, SplitOutputs] = {}
    dist = D.init_distributed(device=device)
    try:
        model = model.to(dist.device)
        for split in splits:
            # The checkpoint's class list: the same names in another order would score every class against the
            # wrong column.
            dataset = build_dataset(config.data, split, transform, class_names=class_names or None)
            class_names = class_names or list(dataset.class_names)
            loader = build_loader(
                dataset,
                batch_size=batch_size or config.data.eval_batch_size or config.data.batch_size,
                sampler=D.build_eval_sampler(dataset),
                workers=config.data.workers if workers is None else workers,
            )
            result = evaluate(model, loader, device=dist.device, amp=amp)
            ignore = result["ignore"].numpy()
            outputs[split] = SplitOutputs(
                logits=result["logits"].numpy(),
                targets=result["targets"].numpy(),
                ignore=ignore if ignore.any() else None,
                paths=list(dataset.paths),
            )
            logger.info("%s on %s: %d images, mAP %.2f", checkpoint, split, len(dataset), result["mAP"])
    finally:
        D.cleanup()
    return outputs, info, (model, config, transform), class_names
