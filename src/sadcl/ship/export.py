"""ONNX export of a trained model (image -> logits, probabilities, optionally label-level features) and its runner.

The exported graph has one input ``images [B, 3, H, W]`` (float32, normalised as at evaluation; B is dynamic, H and W
are fixed to the export size) and the outputs ``logits [B, C]``, ``probs [B, C]`` (sigmoid) and, with
``with_features=True``, ``features [B, C, d]``. The class names and preprocessing (when given) travel in the model's
metadata, so :class:`OnnxRunner` needs nothing else.

Export uses the dynamo exporter (``torch.export`` + onnxscript) with a dynamic batch dimension, and falls back to the
TorchScript exporter with ``dynamic_axes`` if dynamo cannot trace the model. Either way the file is checked by
running it in ONNX Runtime at batch sizes 1 and 3 against PyTorch before it replaces ``path``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sadcl.inference.postprocess import probabilities
from sadcl.io import atomic_path
from sadcl.models import label_features
from sadcl.models.fold_bn import bake_folded_batchnorm

logger = logging.getLogger(__name__)

__all__ = ["OnnxRunner", "export_onnx"]

DEFAULT_OPSET = 18
PARITY_ATOL = 1e-4
# Batch sizes run in ONNX Runtime after export: 1 and 3 differ from the tracing batch (2), so a batch axis that was
# silently specialised to a constant fails here rather than in production.
_CHECK_BATCHES = (1, 3)
_TRACE_BATCH = 2


class _ExportHead(nn.Module):
    """Wraps the model so the graph has exactly the outputs we publish (tuple order = output names)."""

    def __init__(self, model: nn.Module, with_features: bool) -> None:
        super().__init__()
        self.model = model
        self.with_features = with_features

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        out = self.model(images)
        logits = out["logits"]
        if self.with_features:
            return logits, probabilities(logits), label_features(out)
        return logits, probabilities(logits)


def _output_names(with_features: bool) -> list[str]:
    return ["logits", "probs", "features"] if with_features else ["logits", "probs"]


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """The exporter's optimiser passes log every step at INFO; keep our users' logs readable."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _export_dynamo(head: nn.Module, example: Tensor, path: Path, opset: int, dynamic_batch: bool) -> None:
    dynamic_shapes = {"images": {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic_batch else None
    with _quiet_loggers("onnx_ir", "onnxscript", "torch.onnx", "torch.export"):
        program = torch.onnx.export(
            head,
            (example,),
            None,
            dynamo=True,
            input_names=["images"],
            output_names=_output_names(head.with_features),
            opset_version=opset,
            dynamic_shapes=dynamic_shapes,
            optimize=True,
            verbose=False,
        )
    # One self-contained file: external data would be a second file named after the temporary path.
    program.save(str(path), external_data=False)


def _export_torchscript(head: nn.Module, example: Tensor, path: Path, opset: int, dynamic_batch: bool) -> None:
    names = _output_names(head.with_features)
    dynamic_axes = {name: {0: "batch"} for name in ["images", *names]} if dynamic_batch else None
    with warnings.catch_warnings():
        # The tracer warns about every Python scalar it freezes (e.g. attention scaling); they are constants here.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        torch.onnx.export(
            head,
            (example,),
            str(path),
            dynamo=False,
            input_names=["images"],
            output_names=names,
            opset_version=opset,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )


def _add_metadata(path: Path, metadata: dict[str, str]) -> None:
    import onnx

    proto = onnx.load(str(path))
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in metadata.items():
        prop = existing.get(key) or proto.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.save(proto, str(path))


def _parity(
    model: nn.Module, path: Path, *, img_size: tuple[int, int], with_features: bool, dynamic_batch: bool, seed: int
) -> float:
    """Max abs difference between ONNX Runtime and PyTorch over every output at the check batch sizes."""
    runner = OnnxRunner(path)
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for batch in _CHECK_BATCHES if dynamic_batch else (_TRACE_BATCH,):
        x = torch.randn(batch, 3, *img_size, generator=gen)
        with torch.inference_mode():
            ref = model(x)
        expected = {"logits": ref["logits"], "probs": probabilities(ref["logits"])}
        if with_features:
            expected["features"] = ref["features"]
        got = runner(x.numpy())
        for name, value in expected.items():
            if got[name].shape != tuple(value.shape):
                raise RuntimeError(
                    f"ONNX output {name!r} has shape {got[name].shape} at batch {batch}, "
                    f"PyTorch {tuple(value.shape)}: the batch axis is not dynamic"
                )
            diff = float(np.abs(got[name] - value.float().numpy()).max())
            logger.debug("parity batch=%d %s max abs diff %.3g", batch, name, diff)
            worst = max(worst, diff)
    return worst


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    img_size: int | tuple[int, int],
    opset: int = DEFAULT_OPSET,
    with_features: bool = False,
    dynamic_batch: bool = True,
    check: bool = True,
    atol: float = PARITY_ATOL,
    class_names: list[str] | None = None,
    metadata: dict[str, Any] | None = None,
    exporter: str = "auto",
) -> dict[str, Any]:
    """Export ``model`` to an ONNX file, checked against PyTorch, written atomically.

    Args:
        model: A model whose ``forward(images)`` returns a dict with ``logits [B, C]`` (and ``features [B, C, d]``
            for ``with_features``); it is put in eval mode and run on CPU in float32.
        path: Output ``.onnx`` file; replaced only once the new file passes the check.
        img_size: Input size (square side, or ``(H, W)``); H and W are fixed in the graph.
        opset: ONNX opset version.
        with_features: Also output the label-level features.
        dynamic_batch: Make the batch axis dynamic (checked by running batch sizes 1 and 3).
        check: Run the ONNX checker and the ONNX Runtime vs PyTorch parity check.
        atol: Largest allowed absolute difference of any output in the parity check.
        class_names: Stored in the file's metadata (``class_names``, a JSON list).
        metadata: More metadata (e.g. ``{"mean": [...], "std": [...]}``); values that are not strings are stored as
            JSON.
        exporter: ``"dynamo"``, ``"torchscript"`` or ``"auto"`` (dynamo, falling back to TorchScript on failure).

    Returns:
        ``{"path", "opset", "exporter", "outputs", "dynamic_batch", "max_abs_diff" (None without check),
        "seconds", "bytes"}``.

    Raises:
        RuntimeError: Export failed, or the parity check exceeded ``atol`` (the old file at ``path`` is kept).
    """
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise ValueError(f"exporter must be 'auto', 'dynamo' or 'torchscript', got {exporter!r}")
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.float().cpu().eval()
    # Folded BatchNorms (model.fold_frozen_bn) become constant convolution weights: ONNX initializers, no BN ops.
    baked = bake_folded_batchnorm(model)
    head = _ExportHead(baked, with_features).eval()
    example = torch.randn(_TRACE_BATCH, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        # An eager pass of the module that is traced: it fails fast with a readable error on a wrong size, and fills
        # its size-keyed caches (e.g. positional encodings) so that tracing sees constants.
        out = baked(example)
    if with_features and "features" not in out:
        raise ValueError("with_features=True but the model's output has no 'features'")

    meta = {"producer": "sadcl", "img_size": json.dumps(list(size))}
    if class_names is not None:
        num_classes = out["logits"].shape[1]
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for a model with {num_classes} outputs")
        meta["class_names"] = json.dumps(list(class_names))
    for key, value in (metadata or {}).items():
        meta[key] = value if isinstance(value, str) else json.dumps(value)

    start = time.perf_counter()
    with atomic_path(path) as tmp:
        used = exporter
        if exporter in ("auto", "dynamo"):
            try:
                _export_dynamo(head, example, tmp, opset, dynamic_batch)
                used = "dynamo"
            except Exception as e:  # the dynamo exporter raises many types; the fallback is the point
                if exporter == "dynamo":
                    raise RuntimeError(f"dynamo ONNX export failed: {e}") from e
                logger.warning(
                    "dynamo ONNX export failed (%s: %s); falling back to the TorchScript exporter",
                    type(e).__name__,
                    str(e).splitlines()[0][:200] if str(e) else "",
                )
                used = "torchscript"
        if used == "torchscript":
            _export_torchscript(head, example, tmp, opset, dynamic_batch)
        _add_metadata(tmp, meta)
        max_diff = None
        if check:
            import onnx

            onnx.checker.check_model(str(tmp))
            max_diff = _parity(
                model, tmp, img_size=size, with_features=with_features, dynamic_batch=dynamic_batch, seed=1
            )
            logger.info("ONNX parity: max abs diff %.3g (tolerance %.1g)", max_diff, atol)
            if not max_diff <= atol:
                raise RuntimeError(
                    f"ONNX parity check failed: max abs diff {max_diff:.3g} > {atol:g}; {path} was not written"
                )
    info = {
        "path": str(path),
        "opset": opset,
        "exporter": used,
        "outputs": _output_names(with_features),
        "dynamic_batch": dynamic_batch,
        "max_abs_diff": max_diff,
        "seconds": time.perf_counter() - start,
        "bytes": path.stat().st_size,
    }
    logger.info("exported %s (%s exporter, opset %d, %.1f MB)", path, used, opset, info["bytes"] / 2**20)
    return info


class OnnxRunner:
    """Runs an exported model in ONNX Runtime on CPU.

    Args:
        path: The ``.onnx`` file from :func:`export_onnx`.
        threads: Intra-op threads; None lets ONNX Runtime choose (all cores).
        providers: ONNX Runtime execution providers; default CPU.

    Attributes:
        metadata: The file's metadata strings (``class_names``, ``img_size``, ...).
        class_names: The class names from the metadata, or None.
        img_size: ``(H, W)`` the graph expects.
        output_names: The graph's outputs, e.g. ``["logits", "probs"]``.
    """

    def __init__(self, path: str | Path, *, threads: int | None = None, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # warnings about unused initialisers etc. are noise for users
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own exception types for unreadable models
            raise ValueError(f"cannot load ONNX model {path}: {e}") from e
        self.path = path
        meta = self.session.get_modelmeta().custom_metadata_map
        self.metadata: dict[str, str] = dict(meta)
        self.class_names: list[str] | None = json.loads(meta["class_names"]) if "class_names" in meta else None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.img_size: tuple[int, int] = (int(inp.shape[2]), int(inp.shape[3]))
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Run a batch.

        Args:
            images: float32 ``[B, 3, H, W]``, normalised as at evaluation.

        Returns:
            ``{"logits": [B, C], "probs": [B, C]}`` plus ``"features": [B, C, d]`` if exported with features.
        """
        if hasattr(images, "detach"):  # accept a torch tensor too
            images = images.detach().cpu().numpy()
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != self.img_size:
            raise ValueError(f"expected images [B, 3, {self.img_size[0]}, {self.img_size[1]}], got {images.shape}")
        outputs = self.session.run(self.output_names, {self.input_name: images})
        return dict(zip(self.output_names, outputs))
