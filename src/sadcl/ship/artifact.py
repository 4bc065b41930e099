"""What every shipped artefact says about itself: preprocessing, the post-processing rule, thresholds, version.

A model directory's ``config.json`` and an ONNX file's metadata carry the same description, built here, so a
consumer (ONNX Runtime without sadcl, another language, a later sadcl) can reproduce the evaluation preprocessing
and the label rule of :mod:`sadcl.inference.postprocess` from the artefact alone:

``preprocessing``: ``{"img_size": [H, W], "resize": "bilinear", "keep_aspect": false, "crop": null,
"color": "RGB", "scale": 1/255, "mean": [3], "std": [3], "layout": "NCHW", "dtype": "float32"}``.

``postprocessing``: ``{"activation": "sigmoid", "rule": postprocess.RULE, "default_threshold": 0.5}``; the
per-class thresholds travel beside it (``thresholds.json`` in a directory, ``thresholds`` in ONNX metadata).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sadcl import __version__
from sadcl.inference.postprocess import DEFAULT_THRESHOLD, RULE, as_thresholds

__all__ = [
    "eval_transform_from",
    "onnx_metadata",
    "postprocessing_spec",
    "preprocessing_spec",
    "read_preprocessing",
    "thresholds_from_onnx_metadata",
]

_RESIZE = "bilinear"


def preprocessing_spec(config: Any) -> dict[str, Any]:
    """The evaluation preprocessing of a run's :class:`sadcl.config.Config`, as plain JSON data (module docstring)."""
    from sadcl.data.transforms import resolve_normalization

    mean, std = resolve_normalization(config.data.normalization, config.model.backbone)
    size = int(config.model.img_size)
    return {
        "img_size": [size, size],
        "resize": _RESIZE,
        "keep_aspect": False,
        "crop": None,
        "color": "RGB",
        "scale": 1.0 / 255.0,
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "layout": "NCHW",
        "dtype": "float32",
    }


def postprocessing_spec() -> dict[str, Any]:
    """How logits become labels (:mod:`sadcl.inference.postprocess`), as plain JSON data."""
    return {"activation": "sigmoid", "rule": RULE, "default_threshold": DEFAULT_THRESHOLD}


def read_preprocessing(spec: Any, source: str) -> dict[str, Any]:
    """Check a preprocessing description read from an artefact.

    Args:
        spec: The parsed ``preprocessing`` object.
        source: Names the file in error messages.

    Raises:
        ValueError: A missing or malformed field, or a resize rule this version does not implement.
    """
    if not isinstance(spec, Mapping):
        raise ValueError(f"{source}: 'preprocessing' must be an object, got {type(spec).__name__}")
    for key in ("img_size", "mean", "std"):
        if key not in spec:
            raise ValueError(f"{source}: 'preprocessing' has no {key!r}")
    size, mean, std = spec["img_size"], spec["mean"], spec["std"]
    if not (isinstance(size, Sequence) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise ValueError(f"{source}: preprocessing.img_size must be [H, W] (positive integers), got {size!r}")
    for key, value in (("mean", mean), ("std", std)):
        ok = isinstance(value, Sequence) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value)
        if not ok:
            raise ValueError(f"{source}: preprocessing.{key} must be 3 numbers (R, G, B), got {value!r}")
    if any(v <= 0 for v in std):
        raise ValueError(f"{source}: preprocessing.std must be > 0, got {std!r}")
    resize = spec.get("resize", _RESIZE)
    if resize != _RESIZE or spec.get("keep_aspect", False) or spec.get("crop") is not None:
        raise ValueError(
            f"{source}: preprocessing resize={resize!r}, keep_aspect={spec.get('keep_aspect')!r}, "
            f"crop={spec.get('crop')!r}; this sadcl implements only a bilinear resize to img_size without crop"
        )
    return dict(spec)


def eval_transform_from(spec: Mapping[str, Any]) -> Any:
    """The evaluation transform (PIL image -> ``[3, H, W]``) a checked preprocessing description stands for."""
    from sadcl.data.transforms import EvalPreset

    h, w = spec["img_size"]
    return EvalPreset(img_size=(h, w), mean=spec["mean"], std=spec["std"])  # keeps mean/std for de-normalising


def onnx_metadata(config: Any, class_names: Sequence[str], thresholds: Any = None) -> dict[str, Any]:
    """The metadata an exported ONNX file carries beyond ``class_names`` and ``img_size`` (values JSON-able).

    Args:
        config: The run's config (gives the preprocessing and backbone).
        class_names: The C class names (only their count is used here: the thresholds are checked against it).
        thresholds: [C], one value or None (0.5 for every class).
    """
    pre = preprocessing_spec(config)
    thr = as_thresholds(thresholds, len(class_names))
    return {
        "mean": pre["mean"],
        "std": pre["std"],
        "preprocessing": pre,
        "postprocessing": postprocessing_spec(),
        "activation": "sigmoid",
        "rule": RULE,
        "thresholds": [round(float(t), 6) for t in thr],
        "sadcl_version": __version__,
        "backbone": config.model.backbone,
    }


def thresholds_from_onnx_metadata(metadata: Mapping[str, str], num_classes: int, source: str) -> np.ndarray | None:
    """The per-class thresholds [C] stored in an ONNX file's metadata, or None when it has none (older exports).

    Raises:
        ValueError: The ``thresholds`` entry is not a JSON list of C numbers in [0, 1].
    """
    if "thresholds" not in metadata:
        return None
    try:
        values = json.loads(metadata["thresholds"])
        return as_thresholds(values, num_classes)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"{source}: metadata 'thresholds' must be a list of {num_classes} numbers in [0, 1]: {e}"
        ) from None
