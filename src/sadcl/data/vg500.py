"""Visual Genome 500 (docs/spec.md §5 ``vg500``).

Under ``root`` (or ``root/VG``): ``{train,test}_list_500.txt`` (one image name per line),
``vg_category_500_labels_index.json`` (image name -> list of label ids in ``[0, 500)``) and images in ``VG_100K/``.
Class names come from ``class_names=`` or, if present, ``classes.txt`` / ``vg_category_500.txt`` (one per line) or
``vg_category_500.json`` (a list, or name -> id); otherwise they are ``class_000`` ... ``class_499``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sadcl.data.base import BadInput, MultiLabelDataset, dataset_from_rows, reader_options, resolve_class_names
from sadcl.data.coco import load_json
from sadcl.data.images import DataError

_logger = logging.getLogger(__name__)

INDEX_FILE = "vg_category_500_labels_index.json"


def _locate(root: Path) -> Path:
    for d in (root, root / "VG"):
        if (d / INDEX_FILE).is_file():
            return d
    raise DataError(f"{root}: no {INDEX_FILE} found (expected the VG-500 layout under {root} or {root / 'VG'})")


def _class_names(base: Path, num_classes: int) -> list[str]:
    for name in ("classes.txt", "vg_category_500.txt"):
        if (base / name).is_file():
            return resolve_class_names(str(base / name))
    if (base / "vg_category_500.json").is_file():
        data = load_json(base / "vg_category_500.json")
        if isinstance(data, list):
            return [str(x) for x in data]
        if isinstance(data, dict):
            return [name for name, _ in sorted(data.items(), key=lambda kv: int(kv[1]))]
        raise DataError(f"{base / 'vg_category_500.json'}: expected a list of names or an object name -> id")
    return [f"class_{i:03d}" for i in range(num_classes)]


def read_vg500(
    *,
    root: str | os.PathLike,
    split: str,
    class_names: list[str] | str | None = None,
    num_classes: int = 500,
    allow_empty: bool = False,
    image_dir: str | None = None,
    skip_bad: bool = False,
    transform: Callable | None = None,
) -> MultiLabelDataset:
    """Read a VG-500 split.

    Args:
        root: Dataset directory (see the module docstring).
        split: ``train`` or ``test`` (reads ``<split>_list_500.txt``).
        class_names: Class list (sequence or file); default: a names file if present, else generic names.
        num_classes: Number of label ids when no names are available.
        allow_empty: Keep images whose label list is empty (all-zero rows) instead of treating them as errors.
        image_dir: Image directory; default ``VG_100K`` next to the list files.
        skip_bad: Log and skip bad entries (unknown image, bad label id, empty list) and unreadable images.
        transform: Image transform.

    Returns:
        A MultiLabelDataset with ``targets [N, 500]``.
    """
    base = _locate(Path(root))
    names = resolve_class_names(class_names) if class_names is not None else _class_names(base, num_classes)
    list_file = base / f"{split}_list_500.txt"
    if not list_file.is_file():
        raise DataError(f"{list_file}: not found; expected {{train,test}}_list_500.txt")
    index = load_json(base / INDEX_FILE)
    if not isinstance(index, dict):
        raise DataError(f"{base / INDEX_FILE}: expected a JSON object mapping image name -> list of label ids")
    with open(list_file, encoding="utf-8") as f:
        images = [ln.strip() for ln in f.read().splitlines()]
    img_root = Path(image_dir) if image_dir else base / "VG_100K"
    bad = BadInput(str(list_file), skip_bad=skip_bad)
    paths, rows = [], []
    for lineno, image in enumerate(images, start=1):
        if not image:
            continue
        labels = index.get(image)
        where = f"{base / INDEX_FILE}: entry {image!r} (listed at {list_file.name} line {lineno})"
        if labels is None:
            bad.report(f"{where}: image not in the label index")
            continue
        if not isinstance(labels, list) or not all(isinstance(x, int) and 0 <= x < len(names) for x in labels):
            bad.report(f"{where}: expected a list of integer label ids in [0, {len(names)}), got {labels!r}")
            continue
        if not labels and not allow_empty:
            bad.report(f"{where}: empty label list (set allow_empty to keep it as an all-negative row)")
            continue
        row = np.zeros(len(names), np.float32)
        row[labels] = 1.0
        paths.append(str(img_root / image))
        rows.append(row)
    bad.summary(len(paths))
    _logger.info("VG-500 %s: %d images", split, len(paths))
    return dataset_from_rows(paths, rows, names, transform=transform, skip_bad=skip_bad)


def build(cfg: Any, split: str, transform: Callable | None = None) -> MultiLabelDataset:
    """``DataConfig`` -> :func:`read_vg500` (options: class_names, num_classes, allow_empty, image_dir)."""
    o = reader_options(cfg.options, ("class_names", "num_classes", "allow_empty", "image_dir"), "vg500")
    if cfg.root is None:
        raise DataError("VG-500: set data.root")
    return read_vg500(
        root=cfg.root,
        split=split,
        class_names=o.get("class_names"),
        num_classes=int(o.get("num_classes", 500)),
        allow_empty=bool(o.get("allow_empty", False)),
        image_dir=o.get("image_dir"),
        skip_bad=cfg.skip_bad,
        transform=transform,
    )
