"""int8 ONNX: ONNX Runtime quantisation of an exported fp32 model, dynamic by default or static (calibrated).

``dynamic`` (the default: no data, and it kept the demo's mAP) quantises only the weights ahead of time and the
activations of MatMul/Gemm at run time. ``static`` quantises weights *and* activations to int8 in QDQ format, with
activation ranges calibrated on images from the model's training split (:func:`calibration_batches`); on x86 CPUs
with VNNI the convolutions then run as int8 kernels: much faster on dense-convolution backbones (ResNets), but on
the demo's depthwise EfficientNet-Lite0 it was no faster than dynamic and lost 3.5 test mAP
(``benchmarks/bench_int8.py`` measures both; BENCHMARKS.md ``int8``).

The int8 file keeps the fp32 file's metadata (class names, thresholds, preprocessing, rule: :mod:`sadcl.ship.artifact`)
and adds ``quantization``; it is written atomically.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sadcl.io import atomic_path

logger = logging.getLogger(__name__)

__all__ = ["MODES", "calibration_batches", "quantize_onnx"]

MODES = ("static", "dynamic")
# Ops quantised statically. Elementwise ops (Add, Mul, Softmax, LayerNorm's parts) stay fp32: QDQ pairs around them
# cost more time than the int8 arithmetic saves, and the attention softmax is where int8 ranges lose most accuracy.
_STATIC_OPS = ["Conv", "MatMul", "Gemm"]
_DYNAMIC_OPS = ["MatMul", "Gemm"]


class _Batches:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over preprocessed batches ``[b, 3, H, W]``."""

    def __init__(self, input_name: str, batches: Sequence[np.ndarray]) -> None:
        self.input_name = input_name
        self._iter: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iter, None)
        return None if batch is None else {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}


def calibration_batches(
    config: Any,
    *,
    num_images: int = 64,
    batch_size: int = 8,
    seed: int = 0,
    transform: Any = None,
) -> list[np.ndarray]:
    """Preprocessed images from the run's training split for static calibration (a seeded random subset).

    Args:
        config: The run's :class:`sadcl.config.Config` (``data`` says where the training split is).
        num_images: How many images (at most the split's size).
        batch_size: Images per calibration batch.
        seed: Seed of the subset.
        transform: The evaluation transform (default: the one ``config`` describes).

    Returns:
        Float32 batches ``[b, 3, H, W]``.

    Raises:
        ValueError: The training split cannot be read (the message says how to point at it, or to use dynamic).
    """
    from sadcl.data import build_dataset
    from sadcl.ship.artifact import eval_transform_from, preprocessing_spec

    if num_images < 1 or batch_size < 1:
        raise ValueError(f"num_images and batch_size must be >= 1, got {num_images} and {batch_size}")
    transform = transform or eval_transform_from(preprocessing_spec(config))
    try:
        dataset = build_dataset(config.data, config.data.train_split, transform)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"static int8 calibration needs the training split ({config.data.format!r}, root "
            f"{config.data.root!r}): {e}; pass --data-root, or use --quantize-mode dynamic"
        ) from None
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(dataset), size=min(num_images, len(dataset)), replace=False)
    images = [dataset[int(i)][0] for i in sorted(chosen)]
    stacked = np.stack([np.asarray(img, dtype=np.float32) for img in images])
    return [stacked[i : i + batch_size] for i in range(0, len(stacked), batch_size)]


def _preprocess(src: Path, dst: Path) -> Path:
    """ONNX Runtime's recommended pre-pass (shape inference, graph optimisation); the source file if it fails."""
    from onnxruntime.quantization import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        return dst
    except Exception as e:  # the pre-pass is an optimisation; quantising the file as exported still works
        logger.warning("quantisation pre-processing failed (%s); quantising the exported graph as is", e)
        return src


def _copy_metadata(src: Path, dst: Path, extra: dict[str, str]) -> None:
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    meta.update(extra)
    proto = onnx.load(str(dst))
    del proto.metadata_props[:]
    for key, value in meta.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.save(proto, str(dst))


def quantize_onnx(
    src: str | Path,
    dst: str | Path,
    *,
    mode: str = "dynamic",
    calibration: Sequence[np.ndarray] | None = None,
    per_channel: bool = True,
) -> dict[str, Any]:
    """Write an int8 version of an fp32 ONNX model from :func:`sadcl.ship.export.export_onnx`.

    Args:
        src: The fp32 ``.onnx`` file.
        dst: The int8 file to write (replaced only when complete).
        mode: ``"dynamic"`` (weights int8, activations quantised at run time) or ``"static"`` (weights and
            activations int8; needs ``calibration``).
        calibration: Preprocessed batches ``[b, 3, H, W]`` (:func:`calibration_batches`), static only.
        per_channel: One weight scale per output channel (more accurate than one per tensor).

    Returns:
        ``{"path", "mode", "seconds", "bytes", "fp32_bytes", "calibration_images"}``.
    """
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    if mode not in MODES:
        raise ValueError(f"quantisation mode must be one of {list(MODES)}, got {mode!r}")
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"ONNX model not found: {src}")
    if mode == "static" and not calibration:
        raise ValueError("static quantisation needs calibration batches (images from the training split)")
    start = time.perf_counter()
    input_name = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    with tempfile.TemporaryDirectory(prefix="sadcl-quant-") as work, atomic_path(dst) as tmp:
        pre = _preprocess(src, Path(work) / "pre.onnx")
        if mode == "static":
            quantize_static(
                str(pre),
                str(tmp),
                _Batches(input_name, calibration),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
                op_types_to_quantize=_STATIC_OPS,
                calibrate_method=CalibrationMethod.MinMax,
            )
        else:
            quantize_dynamic(
                str(pre),
                str(tmp),
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
                op_types_to_quantize=_DYNAMIC_OPS,
            )
        images = sum(len(b) for b in calibration) if mode == "static" and calibration else 0
        info = {"mode": mode, "per_channel": per_channel, "calibration_images": images}
        _copy_metadata(src, tmp, {"quantization": json.dumps({"dtype": "int8", **info})})
    result = {
        "path": str(dst),
        **info,
        "seconds": time.perf_counter() - start,
        "bytes": dst.stat().st_size,
        "fp32_bytes": src.stat().st_size,
    }
    logger.info(
        "wrote %s (int8 %s, %.1f MB from %.1f MB)", dst, mode, result["bytes"] / 2**20, src.stat().st_size / 2**20
    )
    return result
