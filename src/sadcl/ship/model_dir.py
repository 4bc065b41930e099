"""The model directory: a trained model as files any tool reads without the training code's config or a pickle.

Layout (``sadcl export CHECKPOINT --format dir --out DIR``)::

    DIR/model.safetensors   the selected weights (safetensors: tensors only, never unpickled)
    DIR/config.json         {"format": "sadcl-model", "format_version", "sadcl_version", "architecture",
                             "num_classes", "model": ModelConfig, "preprocessing", "postprocessing",
                             "training": the other Config sections (data, loss, optim, train)}
    DIR/classes.txt         one class name per line, in output order
    DIR/thresholds.json     {class: threshold} (tuned by ``sadcl tune-thresholds``, or 0.5)
    DIR/README.md           the model card (:mod:`sadcl.ship.model_card`)

:func:`load_model_dir` is what :func:`sadcl.inference.open.open_model` (every command, ``sadcl.load_model``) calls
for a directory. Every file is written atomically (:mod:`sadcl.io`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sadcl import __version__
from sadcl.escape import markdown_code
from sadcl.inference.postprocess import as_thresholds
from sadcl.io import atomic_path, atomic_write_text
from sadcl.ship.artifact import postprocessing_spec, preprocessing_spec, read_preprocessing

logger = logging.getLogger(__name__)

__all__ = ["ModelDir", "export_model_dir", "is_model_dir", "load_model_dir", "read_model_dir", "save_model_dir"]

FORMAT = "sadcl-model"
FORMAT_VERSION = 1
WEIGHTS, CONFIG, CLASSES, THRESHOLDS, CARD = (
    "model.safetensors",
    "config.json",
    "classes.txt",
    "thresholds.json",
    "README.md",
)


@dataclass
class ModelDir:
    """A model directory's description, read without its weights.

    Attributes:
        path: The directory.
        config: The run's :class:`sadcl.config.Config` (``model`` from config.json, the rest from ``training``).
        class_names: The C class names.
        thresholds: Per-class thresholds [C] (float64).
        preprocessing: The checked ``preprocessing`` object (:mod:`sadcl.ship.artifact`).
    """

    path: Path
    config: Any
    class_names: list[str]
    thresholds: np.ndarray
    preprocessing: dict[str, Any]


def is_model_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding ``config.json`` and ``model.safetensors``."""
    p = Path(path)
    return p.is_dir() and (p / CONFIG).is_file() and (p / WEIGHTS).is_file()


def save_model_dir(
    out: str | Path,
    *,
    model: torch.nn.Module,
    config: Any,
    class_names: list[str],
    thresholds: Any = None,
    results: dict[str, Any] | None = None,
    source: str = "a sadcl checkpoint",
    thresholds_source: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a model directory.

    Args:
        out: The directory: new, empty, or a model directory sadcl wrote before (its five files are replaced; any
            other file there is left alone). Anything else is refused unless ``overwrite``.
        model: The model whose ``state_dict`` is shipped.
        config: Its :class:`sadcl.config.Config`.
        class_names: The C class names, in output order (unique, no line breaks).
        thresholds: [C], one value, or None (0.5).
        results: The stage's ``results.json`` for the model card, or None.
        source: Where the weights came from (for the model card).
        thresholds_source: How the thresholds were chosen (for the model card).
        overwrite: Write into a non-empty directory that is not a sadcl model directory; the five files replace any
            of the same names, nothing else is touched or deleted.

    Returns:
        The directory.

    Raises:
        ValueError: ``out`` is not empty and not a sadcl model directory (and not ``overwrite``); nothing is written.
    """
    from safetensors.torch import save_file

    from sadcl.inference.thresholds import save_thresholds
    from sadcl.ship.model_card import render_model_card

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory; give a directory for the model")
    _check_destination(out, overwrite=overwrite)
    num_classes = int(config.model.num_classes)
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for a model with {num_classes} outputs")
    if any(not n or "\n" in n or n != n.strip() for n in class_names):
        raise ValueError("class names must be non-empty, without line breaks or surrounding spaces (classes.txt)")
    thr = as_thresholds(thresholds, num_classes)
    out.mkdir(parents=True, exist_ok=True)
    # clone(): safetensors refuses tensors that share storage; contiguous copies on CPU are what it stores.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(out / WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "sadcl_version": __version__})
    sections = config.to_dict()
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "sadcl_version": __version__,
        "architecture": config.model.architecture,
        "num_classes": num_classes,
        "model": sections.pop("model"),
        "preprocessing": preprocessing_spec(config),
        "postprocessing": postprocessing_spec(),
        "training": sections,
    }
    atomic_write_text(out / CONFIG, json.dumps(document, indent=2) + "\n")
    atomic_write_text(out / CLASSES, "".join(f"{n}\n" for n in class_names))
    save_thresholds(out / THRESHOLDS, thr, list(class_names))
    card = render_model_card(
        config=config,
        class_names=class_names,
        thresholds=thr,
        results=results,
        source=source,
        thresholds_source=thresholds_source or ("default 0.5" if thresholds is None else "given"),
    )
    atomic_write_text(out / CARD, card)
    logger.info("wrote model directory %s (%d classes)", out, num_classes)
    return out


def _written_by_sadcl(path: Path) -> bool:
    """Whether ``path`` holds the config.json of a sadcl model directory (``"format": "sadcl-model"``)."""
    try:
        doc = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("format") == FORMAT


def _check_destination(out: Path, *, overwrite: bool) -> None:
    """Refuse to write a model directory over a user's files: a non-empty folder must be one sadcl wrote."""
    if not out.is_dir() or overwrite or _written_by_sadcl(out):
        return
    present = sorted(p.name for p in out.iterdir())
    if not present:
        return
    ours = [n for n in present if n in (WEIGHTS, CONFIG, CLASSES, THRESHOLDS, CARD)]
    raise ValueError(
        f"{out} is not empty and is not a model directory written by sadcl ({', '.join(present[:5])}"
        f"{', ...' if len(present) > 5 else ''}): choose a new or empty directory, or add --overwrite to write "
        + (f"{', '.join(ours)} over the files of those names" if ours else "the model files beside them")
        + " (nothing else there is touched)"
    )


def read_model_dir(path: str | Path) -> ModelDir:
    """Read and check a model directory's config, classes and thresholds (not the weights).

    Raises:
        FileNotFoundError: A required file is missing (the message names it).
        ValueError: A file is malformed; the message names the file and the field.
    """
    from sadcl.config import Config
    from sadcl.inference.thresholds import load_thresholds

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model directory not found: {path}")
    for name in (CONFIG, WEIGHTS, CLASSES):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path}: no {name}; a model directory is written by `sadcl export --format dir`")
    config_file = path / CONFIG
    try:
        doc = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{config_file}: not valid JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{config_file}: expected 'format': {FORMAT!r} (a sadcl model directory's config.json)")
    version = doc.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{config_file}: format_version {version!r}; this sadcl ({__version__}) reads up to {FORMAT_VERSION}"
        )
    for key in ("model", "training", "preprocessing"):
        if not isinstance(doc.get(key), dict):
            raise ValueError(f"{config_file}: {key!r} must be an object")
    config = Config.from_dict({**doc["training"], "model": doc["model"]}, source=str(config_file))
    class_names = [line for line in (path / CLASSES).read_text(encoding="utf-8").splitlines() if line]
    if len(class_names) != config.model.num_classes:
        raise ValueError(
            f"{path / CLASSES}: {len(class_names)} class names, but config.json model.num_classes is "
            f"{config.model.num_classes}"
        )
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"{path / CLASSES}: class names must be unique")
    thresholds = (
        load_thresholds(path / THRESHOLDS, class_names)
        if (path / THRESHOLDS).is_file()
        else as_thresholds(None, len(class_names))
    )
    preprocessing = read_preprocessing(doc["preprocessing"], f"{config_file}")
    return ModelDir(path, config, class_names, thresholds, preprocessing)


def load_model_dir(
    path: str | Path | ModelDir, *, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, Any, list[str]]:
    """Rebuild the model of a model directory, in eval mode (weights from safetensors: nothing is unpickled).

    Args:
        path: The directory, or what :func:`read_model_dir` read from it (then it is not read again).
        device: Where the model is put.

    Returns:
        ``(model, config, class_names)``, as :func:`sadcl.inference.open.load_model`.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from sadcl.distributed import resolve_device
    from sadcl.models import build_model

    info = path if isinstance(path, ModelDir) else read_model_dir(path)
    model = build_model(dataclasses.replace(info.config.model, prototypes=None, pretrained=False))
    weights_file = info.path / WEIGHTS
    try:
        weights = load_file(str(weights_file), device="cpu")
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{weights_file}: not a readable safetensors file: {e}") from None
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise ValueError(f"{weights_file} does not match the model config.json describes: {e}") from None
    model.to(resolve_device(device)).eval()
    return model, info.config, info.class_names


def export_model_dir(trained: Any, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write the model directory of an opened model (a ``sadcl train`` checkpoint, or another model directory).

    Args:
        trained: A :class:`sadcl.inference.open.TrainedModel` (from ``open_model(CHECKPOINT, thresholds=FILE)``): its
            weights, config, class names and operating thresholds are shipped.
        out: The directory to write.
        overwrite: See :func:`save_model_dir`.

    Returns:
        The directory.
    """
    from sadcl.io import read_json

    if Path(out).is_dir():
        _check_destination(Path(out), overwrite=overwrite)  # before writing anything: fail fast, write nothing
    model = trained.torch_model("a model directory")
    if not trained.class_names:
        raise ValueError(f"{trained.path} stores no class names; a model directory needs them (classes.txt)")
    how = {
        "file": f"tuned ({markdown_code(Path(trained.thresholds_path or '').name)})",
        "threshold": f"one threshold ({trained.thresholds[0]:g})",
        "model": "as in the source model directory",
    }.get(trained.threshold_source)
    # Training writes the stage's test/val metrics beside its best.pt; a model directory keeps none of its own.
    results = read_json(trained.path.parent / "results.json") if trained.kind == "checkpoint" else None
    return save_model_dir(
        out,
        model=model,
        config=trained.config,
        class_names=trained.class_names,
        thresholds=None if how is None else trained.thresholds,
        results=results if isinstance(results, dict) else None,
        source=trained.path.name,
        thresholds_source=how or "default 0.5",
        overwrite=overwrite,
    )
