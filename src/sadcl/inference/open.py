"""One entry to a trained model: :func:`open_model` reads a checkpoint, a model directory or an ONNX file.

Every command that uses a trained model (predict, evaluate, tune-thresholds, visualize, report, serve, export,
build-prototypes) and the Python API (:func:`load_model`) open it here, so they all get the same weights, the same
evaluation transform and the same operating thresholds. The thresholds follow one rule, :func:`operating_thresholds`:
a thresholds file > one ``--threshold`` value > the thresholds the model ships (a model directory's thresholds.json,
an ONNX file's metadata) > 0.5.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sadcl.checkpoint import load_checkpoint, selected_weights
from sadcl.config import Config
from sadcl.data.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalPreset, build_eval_transform
from sadcl.distributed import resolve_device
from sadcl.inference.postprocess import DEFAULT_THRESHOLD, as_thresholds
from sadcl.inference.thresholds import load_thresholds
from sadcl.models import build_model
from sadcl.ship.artifact import thresholds_from_onnx_metadata
from sadcl.ship.model_dir import THRESHOLDS, load_model_dir, read_model_dir

logger = logging.getLogger(__name__)

__all__ = ["WEIGHTS", "TrainedModel", "load_model", "open_model", "operating_thresholds", "weights_choice"]

WEIGHTS = ("selected", "ema", "regular")


@dataclass
class TrainedModel:
    """A trained model, opened once, with everything a command needs to use it.

    Attributes:
        path: The file or directory it was opened from.
        kind: ``"checkpoint"``, ``"model_dir"`` or ``"onnx"``.
        model: The torch model in eval mode (None for ONNX).
        runner: The :class:`sadcl.ship.export.OnnxRunner` (ONNX only).
        config: The run's :class:`sadcl.config.Config` (None for ONNX).
        class_names: The C class names the file stores (empty for a checkpoint that stores none: callers then take
            the dataset's).
        thresholds: The operating thresholds [C] (float64), chosen by :func:`operating_thresholds`.
        threshold_source: Where they came from: ``"file"`` (a thresholds file), ``"threshold"`` (one value),
            ``"model"`` (what the model directory or ONNX file ships) or ``"default"`` (0.5).
        thresholds_path: The file they were read from (the thresholds file, a model directory's thresholds.json or
            the ONNX file), else None.
        transform: The evaluation transform, PIL image -> ``[3, H, W]``.
        weights: The weights loaded: ``"ema"`` or ``"regular"`` (checkpoint), ``"model_dir"`` or ``"onnx"``.
        info: What a checkpoint says about its run (``stage``, ``epoch``, ``selected``); empty otherwise.
    """

    path: Path
    kind: str
    model: nn.Module | None
    runner: Any
    config: Config | None
    class_names: list[str]
    thresholds: np.ndarray
    threshold_source: str
    thresholds_path: Path | None
    transform: Callable[[Any], torch.Tensor]
    weights: str
    info: dict[str, Any] = field(default_factory=dict)

    def torch_model(self, command: str) -> nn.Module:
        """The torch model, or a ``ValueError`` saying that ``command`` needs a checkpoint or a model directory."""
        if self.model is None:
            raise ValueError(f"{self.path}: {command} needs a checkpoint or a model directory, not an ONNX file")
        return self.model


def weights_choice(use_ema: bool | None) -> str:
    """``use_ema`` (None / True / False) as a ``weights`` choice of :func:`open_model`."""
    return "selected" if use_ema is None else ("ema" if use_ema else "regular")


def operating_thresholds(
    class_names: Sequence[str],
    *,
    thresholds: str | os.PathLike | None = None,
    threshold: float | None = None,
    shipped: np.ndarray | None = None,
    shipped_path: Path | None = None,
) -> tuple[np.ndarray, str, Path | None]:
    """The operating thresholds: the one precedence rule of every sadcl command.

    A thresholds file (``sadcl tune-thresholds``) > one ``threshold`` for every class > the thresholds the model ships
    (``shipped``: a model directory's or an ONNX file's) > 0.5.

    Args:
        class_names: The C class names (a thresholds file is read by name).
        thresholds: A thresholds file, or None.
        threshold: One threshold in [0, 1], or None.
        shipped: Per-class thresholds [C] the model carries, or None.
        shipped_path: The file ``shipped`` was read from.

    Returns:
        ``(thresholds [C] float64, source, path)``; see :class:`TrainedModel`.
    """
    if thresholds is not None:
        return load_thresholds(thresholds, list(class_names)), "file", Path(thresholds)
    if threshold is not None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        return as_thresholds(threshold, len(class_names)), "threshold", None
    if shipped is not None:
        return as_thresholds(shipped, len(class_names)), "model", shipped_path
    return as_thresholds(DEFAULT_THRESHOLD, len(class_names)), "default", None


def open_model(
    path: str | os.PathLike,
    *,
    weights: str = "selected",
    thresholds: str | os.PathLike | None = None,
    threshold: float | None = None,
    device: str | torch.device = "cpu",
    data_root: str | None = None,
    threads: int | None = None,
) -> TrainedModel:
    """Open a trained model: a ``sadcl train`` checkpoint, a model directory or an ONNX file (``.onnx``).

    Args:
        path: The checkpoint file, model directory or ONNX file.
        weights: ``"selected"`` (the weights the run selected on the validation split), ``"ema"`` or ``"regular"``
            (checkpoints only; a model directory and an ONNX file hold one set).
        thresholds: A thresholds file from ``sadcl tune-thresholds``.
        threshold: One threshold for every class.
        device: Where the torch model is put (``cpu``, ``cuda``, ``cuda:1`` or ``auto``).
        data_root: Replaces the run's ``data.root`` in the config (the data moved since training).
        threads: ONNX Runtime intra-op threads (ONNX only; None: all cores).

    Returns:
        The :class:`TrainedModel`.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"unknown weights {weights!r}; valid: {list(WEIGHTS)}")
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return _open_onnx(path, thresholds=thresholds, threshold=threshold, threads=threads)
    shipped, shipped_path, info = None, None, {}
    if path.is_dir():  # a model directory, or an error naming the file it lacks
        shipped_dir = read_model_dir(path)
        model, config, class_names = load_model_dir(shipped_dir)
        kind, used = "model_dir", "model_dir"
        if (path / THRESHOLDS).is_file():
            shipped, shipped_path = shipped_dir.thresholds, path / THRESHOLDS
    else:
        state = load_checkpoint(path)
        config = Config.from_dict(state["config"], source=str(path))
        # The weights already hold the prototypes and bank; don't reread the prototypes file (it may have moved).
        model = build_model(dataclasses.replace(config.model, prototypes=None, pretrained=False))
        use_ema = None if weights == "selected" else weights == "ema"
        loaded = selected_weights(state, use_ema)
        try:
            model.load_state_dict(loaded)
        except RuntimeError as exc:
            raise ValueError(f"checkpoint {path} does not match the model its config describes: {exc}") from exc
        model.eval()
        class_names = list(state.get("class_names") or [])
        kind, used = "checkpoint", "ema" if loaded is state.get("ema") else "regular"
        info = {k: state.get(k) for k in ("stage", "epoch", "selected")}
    if data_root is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, root=data_root))
    names = class_names or [f"class_{i}" for i in range(config.model.num_classes)]
    chosen, source, chosen_path = operating_thresholds(
        names, thresholds=thresholds, threshold=threshold, shipped=shipped, shipped_path=shipped_path
    )
    return TrainedModel(
        path=path,
        kind=kind,
        model=model.to(resolve_device(device)),
        runner=None,
        config=config,
        class_names=class_names,
        thresholds=chosen,
        threshold_source=source,
        thresholds_path=chosen_path,
        transform=build_eval_transform(config),
        weights=used,
        info=info,
    )


def _open_onnx(
    path: Path, *, thresholds: str | os.PathLike | None, threshold: float | None, threads: int | None
) -> TrainedModel:
    """An ``sadcl export`` file: class names, input size, normalisation and thresholds from its metadata."""
    from sadcl.ship.export import OnnxRunner  # onnxruntime: only when an ONNX file is opened

    runner = OnnxRunner(path, threads=threads)
    if "probs" not in runner.output_names:
        raise ValueError(f"{path}: the ONNX model has no 'probs' output (outputs: {runner.output_names})")
    meta = runner.metadata
    if "mean" in meta and "std" in meta:
        mean, std = json.loads(meta["mean"]), json.loads(meta["std"])
    else:
        logger.warning("%s has no mean/std metadata; normalising with the ImageNet values", path)
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    names = runner.class_names
    if not names:
        raise ValueError(f"{path}: the ONNX model has no class_names metadata")
    chosen, source, chosen_path = operating_thresholds(
        names,
        thresholds=thresholds,
        threshold=threshold,
        shipped=thresholds_from_onnx_metadata(meta, len(names), str(path)),
        shipped_path=path,
    )
    return TrainedModel(
        path=path,
        kind="onnx",
        model=None,
        runner=runner,
        config=None,
        class_names=list(names),
        thresholds=chosen,
        threshold_source=source,
        thresholds_path=chosen_path,
        transform=EvalPreset(img_size=tuple(runner.img_size), mean=mean, std=std),
        weights="onnx",
    )


def load_model(
    path: str | os.PathLike,
    *,
    use_ema: bool | None = None,
    map_location: str | torch.device = "cpu",
    data_root: str | None = None,
) -> tuple[nn.Module, Config, list[str]]:
    """Rebuild the model of a checkpoint or a model directory, in eval mode (:func:`open_model` without thresholds).

    Args:
        path: Checkpoint file, or a model directory (weights from safetensors; ``use_ema`` does not apply).
        use_ema: See :func:`sadcl.checkpoint.selected_weights` (default: the weights selected on the validation split).
        map_location: Device for the model.
        data_root: Replaces the run's ``data.root`` in the returned config.

    Returns:
        ``(model, config, class_names)``.
    """
    opened = open_model(path, weights=weights_choice(use_ema), device=map_location, data_root=data_root)
    return opened.torch_model("load_model"), opened.config, opened.class_names
