"""Batched prediction on image files with a PyTorch checkpoint or an exported ONNX model.

Label selection is the one post-processing rule of :mod:`sadcl.inference.postprocess` (both engines): a class is
predicted when its probability is strictly above its threshold (per class with a ``sadcl tune-thresholds`` file, else
the global ``threshold``), labels are ordered by probability, and ``top_k=k`` keeps at most k of them (never adding one
below its threshold, so an image can have no label at all).

Inputs are files, directories (searched recursively for image extensions) and glob patterns
(:func:`sadcl.inference.inputs.expand_inputs`); outputs are written by :mod:`sadcl.inference.writers`. The torch engine
runs under ``torch.inference_mode`` in eval mode, with the model and the batches in ``channels_last`` memory format
(faster convolutions on CPU and GPU), and under float16 autocast on CUDA only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader

from sadcl.data.images import ImageLoadError
from sadcl.distributed import resolve_device
from sadcl.inference.inputs import IMAGE_EXTENSIONS, ImageInput, ImageList, collate_images, expand_inputs, image_name
from sadcl.inference.open import TrainedModel, open_model, weights_choice
from sadcl.inference.postprocess import as_thresholds, probabilities, select
from sadcl.inference.writers import write_csv, write_json

logger = logging.getLogger(__name__)

__all__ = ["IMAGE_EXTENSIONS", "Predictor", "default_engine", "expand_inputs", "write_csv", "write_json"]

ENGINES = ("torch", "onnxruntime")


def default_engine(path: str | os.PathLike) -> str:
    """``"onnxruntime"`` for a ``.onnx`` file, else ``"torch"`` (checkpoints: ``.pt``, ``.pth``, ...)."""
    return "onnxruntime" if str(path).lower().endswith(".onnx") else "torch"


class Predictor:
    """Multi-label prediction for images: preprocessing, batched forward, thresholds, top-k.

    Give either ``model`` (torch engine) or ``runner`` (an :class:`sadcl.ship.export.OnnxRunner`); the usual entry
    points are :meth:`from_checkpoint`, :meth:`from_onnx` and :meth:`from_path`.

    Args:
        model: A model whose ``forward(images [B, 3, H, W])`` returns ``{"logits": [B, C], ...}``. It is put in eval
            mode and moved to ``device`` (and to ``channels_last``) in place.
        runner: An ONNX Runtime runner (outputs ``probs [B, C]``), instead of ``model``.
        config: The run's :class:`sadcl.config.Config`; gives the preprocessing when ``transform`` is None.
        class_names: The C class names (default ``class_0`` ...).
        transform: PIL image -> ``[3, H, W]`` float tensor (default: the evaluation transform of ``config``).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:1"``, ... (torch engine only).
        threshold: Global probability threshold.
        thresholds: Per-class thresholds [C]; replace ``threshold`` when given.
        top_k: Keep at most this many of the labels above threshold (None: all of them).
        batch_size: Images per forward.
        channels_last: Run convolutions in ``channels_last`` memory format (torch engine).
        amp: float16 autocast on CUDA (never on CPU, where it is slower and changes results).
        workers: Loader processes for decoding image files when there is more than one batch of them (0: decode in
            this process).
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        runner: Any = None,
        config: Any = None,
        class_names: Sequence[str] | None = None,
        transform: Callable[[Image.Image], Tensor] | None = None,
        device: str | torch.device = "auto",
        threshold: float = 0.5,
        thresholds: Any = None,
        top_k: int | None = None,
        batch_size: int = 32,
        channels_last: bool = True,
        amp: bool = True,
        workers: int = 0,
    ) -> None:
        if (model is None) == (runner is None):
            raise ValueError("give exactly one of model (torch engine) and runner (onnxruntime engine)")
        if transform is None:
            if config is None:
                raise ValueError("a transform or a config (for the evaluation transform) is required")
            from sadcl.data.transforms import build_eval_transform

            transform = build_eval_transform(config)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.engine = "torch" if model is not None else "onnxruntime"
        self.model, self.runner, self.config, self.transform = model, runner, config, transform
        self.batch_size, self.top_k, self.workers = batch_size, top_k, workers
        self.device = resolve_device(device) if model is not None else torch.device("cpu")
        self.channels_last = channels_last and model is not None
        self.amp = amp and self.device.type == "cuda"
        if model is not None:
            model.eval().to(self.device)
            if self.channels_last:
                model.to(memory_format=torch.channels_last)  # only 4-D weights (convolutions) change layout
        num_classes = self._num_classes(class_names)
        self.class_names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class names for a model with {num_classes} outputs")
        self.thresholds: np.ndarray = as_thresholds(threshold if thresholds is None else thresholds, num_classes)
        """Per-class thresholds [C] in use (the global threshold repeated when no file was given)."""

    def _num_classes(self, class_names: Sequence[str] | None) -> int:
        if self.runner is not None:
            names = getattr(self.runner, "class_names", None) or class_names
            if not names:
                raise ValueError("the ONNX model has no class_names metadata; pass class_names")
            return len(names)
        num = getattr(self.model, "num_classes", None)
        if num is None:
            num = getattr(getattr(self.model, "query_embed", None), "num_embeddings", None)
        if num is None:
            if not class_names:
                raise ValueError("cannot tell the model's number of classes; pass class_names")
            num = len(class_names)
        return int(num)

    # ---------------------------------------------------------------------------------------------- constructors
    @classmethod
    def from_trained(
        cls,
        trained: TrainedModel,
        *,
        device: str | torch.device = "auto",
        top_k: int | None = None,
        batch_size: int = 32,
        channels_last: bool = True,
        amp: bool = True,
        workers: int = 0,
    ) -> Predictor:
        """A predictor for an opened model (:func:`sadcl.inference.open.open_model`): its weights (or ONNX
        session), class names, evaluation transform and operating thresholds.

        Args:
            trained: The opened model.
            Others: see :class:`Predictor` (``device``, ``channels_last`` and ``amp``: torch engine only).
        """
        names = trained.class_names or [f"class_{i}" for i in range(len(trained.thresholds))]
        engine: dict[str, Any] = (
            {"runner": trained.runner}
            if trained.model is None
            else {"device": device, "channels_last": channels_last, "amp": amp}
        )
        return cls(
            trained.model,
            config=trained.config,
            class_names=names,
            transform=trained.transform,
            thresholds=trained.thresholds,
            top_k=top_k,
            batch_size=batch_size,
            workers=workers,
            **engine,
        )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        *,
        device: str | torch.device = "auto",
        use_ema: bool | None = None,
        threshold: float | None = None,
        thresholds_file: str | os.PathLike | None = None,
        top_k: int | None = None,
        batch_size: int = 32,
        channels_last: bool = True,
        amp: bool = True,
        workers: int = 0,
    ) -> Predictor:
        """A torch-engine predictor for a ``sadcl train`` checkpoint or a model directory.

        Args:
            use_ema: True = EMA weights, False = regular weights, None = the ones selected on the validation split
                (see :func:`sadcl.checkpoint.selected_weights`).
            threshold: One threshold for every class; None = the thresholds a model directory ships, else 0.5.
            thresholds_file: JSON ``{class: threshold}`` from ``sadcl tune-thresholds``; replaces ``threshold``.
            Others: see :class:`Predictor`.
        """
        if default_engine(path) == "onnxruntime":
            raise ValueError(f"{path}: the torch engine needs a checkpoint, not an ONNX file; use --engine onnxruntime")
        trained = open_model(path, weights=weights_choice(use_ema), thresholds=thresholds_file, threshold=threshold)
        return cls.from_trained(
            trained,
            device=device,
            top_k=top_k,
            batch_size=batch_size,
            channels_last=channels_last,
            amp=amp,
            workers=workers,
        )

    @classmethod
    def from_onnx(
        cls,
        path: str | os.PathLike,
        *,
        threshold: float | None = None,
        thresholds_file: str | os.PathLike | None = None,
        top_k: int | None = None,
        batch_size: int = 32,
        threads: int | None = None,
        workers: int = 0,
    ) -> Predictor:
        """An onnxruntime-engine predictor for a ``sadcl export`` file (CPU).

        Class names, input size, normalisation and thresholds come from the file's metadata (ImageNet mean/std when
        it has none; 0.5 when it ships no thresholds).

        Args:
            threshold: One threshold for every class; None = the file's ``thresholds`` metadata, else 0.5.
            threads: ONNX Runtime intra-op threads (None: all cores).
            Others: see :meth:`from_checkpoint`.
        """
        if default_engine(path) != "onnxruntime":
            raise ValueError(f"{path}: the onnxruntime engine needs an .onnx file; make one with `sadcl export`")
        trained = open_model(path, thresholds=thresholds_file, threshold=threshold, threads=threads)
        return cls.from_trained(trained, top_k=top_k, batch_size=batch_size, workers=workers)

    @classmethod
    def from_path(cls, path: str | os.PathLike, *, engine: str | None = None, **kwargs: Any) -> Predictor:
        """:meth:`from_checkpoint` or :meth:`from_onnx`; ``engine`` None picks by extension (:func:`default_engine`).

        ``kwargs`` are those of the chosen constructor.
        """
        engine = engine or default_engine(path)
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; valid: {list(ENGINES)}")
        return (cls.from_onnx if engine == "onnxruntime" else cls.from_checkpoint)(path, **kwargs)

    # ---------------------------------------------------------------------------------------------- inference
    def predict_tensor(self, images: Tensor | np.ndarray) -> np.ndarray:
        """Probabilities of preprocessed images.

        Args:
            images: ``[B, 3, H, W]`` float, normalised as at evaluation; run in chunks of ``batch_size``.

        Returns:
            Probabilities ``[B, C]`` (float32).
        """
        x = torch.as_tensor(images)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got shape {tuple(x.shape)}")
        parts = [self._forward(x[i : i + self.batch_size]) for i in range(0, x.shape[0], self.batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, len(self.class_names)), np.float32)

    def outputs(self, x: Tensor, *, return_attn: bool = False) -> dict[str, Tensor]:
        """The torch model's outputs for one batch ``[b, 3, H, W]``, run as every prediction runs (eval mode, the
        predictor's device and memory format, ``inference_mode``, float16 autocast on CUDA only).

        ``return_attn=True`` adds ``attn [b, C, h, w]`` (the demo page's maps come from the forward its scores do).
        """
        if self.model is None:
            raise ValueError("the onnxruntime engine gives probabilities only; outputs() needs the torch engine")
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        with torch.inference_mode(), torch.autocast(device_type=self.device.type, enabled=self.amp):
            x = x.to(self.device, dtype=torch.float32, non_blocking=True, memory_format=fmt)
            return self.model(x, return_attn=True) if return_attn else self.model(x)

    def _forward(self, x: Tensor) -> np.ndarray:
        """One batch ``[b, 3, H, W]`` -> probabilities ``[b, C]`` (float32 numpy)."""
        if self.runner is not None:
            return np.asarray(self.runner(x.float().numpy())["probs"], dtype=np.float32)
        return probabilities(self.outputs(x)["logits"]).cpu().numpy()

    def select(self, probs: np.ndarray) -> list[int]:
        """Predicted class indices of one image's probabilities [C], best first.

        The rule is :func:`sadcl.inference.postprocess.select`.
        """
        return select(probs, self.thresholds, top_k=self.top_k)

    def predict_images(
        self,
        images: Sequence[ImageInput],
        *,
        skip_bad: bool = False,
        all_scores: bool = False,
        skipped: list[str] | None = None,
        progress: bool = False,
    ) -> list[dict[str, Any]]:
        """Predict labels for PIL images and/or image files.

        Args:
            images: PIL images or paths (see :func:`expand_inputs` to build the list).
            skip_bad: Leave out unreadable files (each logged, and counted in ``skipped``) instead of raising.
            all_scores: Add every class's probability to each result.
            skipped: When given, the error message of every skipped file is appended to it.
            progress: Show a progress bar (on stderr) over the batches.

        Returns:
            One dict per (readable) input, in input order: ``{"image": str, "labels": [{"label": str, "score":
            float}, ...] (best first), "scores": {class: float} (with all_scores)}``.

        Raises:
            ImageLoadError: A file cannot be read (without ``skip_bad``); the message names it.
        """
        items = list(images)
        dataset = ImageList(items, self.transform)
        # Worker processes only pay off for files and more than one batch; PIL images would be pickled to them.
        use_workers = (
            self.workers > 0 and len(items) > self.batch_size and not any(isinstance(it, Image.Image) for it in items)
        )
        workers = min(self.workers, -(-len(items) // self.batch_size)) if use_workers else 0
        loader = DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=workers,
            collate_fn=collate_images,
            pin_memory=self.device.type == "cuda",
        )
        results: list[dict[str, Any]] = []
        errors: list[str] = []
        batches: Any = loader
        if progress:
            from tqdm import tqdm

            batches = tqdm(loader, desc="predict", unit="batch", leave=False)
        for indices, x, batch_errors in batches:
            for error in batch_errors:
                if not skip_bad:
                    raise ImageLoadError(error)
                logger.warning("skipped unreadable image: %s", error)
                errors.append(error)
            if x is None:
                continue
            for index, p in zip(indices, self._forward(x)):
                results.append(self._result(image_name(items[index], index), p, all_scores))
        if errors:
            logger.warning("skipped %d of %d images that could not be read", len(errors), len(items))
            if skipped is not None:
                skipped.extend(errors)
        return results

    def _result(self, name: str, probs: np.ndarray, all_scores: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "image": name,
            "labels": [{"label": self.class_names[c], "score": float(probs[c])} for c in self.select(probs)],
        }
        if all_scores:
            out["scores"] = {n: float(s) for n, s in zip(self.class_names, probs)}
        return out

    def __repr__(self) -> str:
        return (
            f"Predictor(engine={self.engine}, device={self.device}, classes={len(self.class_names)}, "
            f"batch_size={self.batch_size}, top_k={self.top_k})"
        )
