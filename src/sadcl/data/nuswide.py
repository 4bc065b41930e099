"""NUS-WIDE (81 concepts), the official code's layout (docs/spec.md §5 ``nus_wide``).

Under ``root``: ``ImageList/{Train,Test}Imagelist.txt`` (one image path per line, Windows ``\\`` separators allowed,
relative to ``Flickr/``), ``Groundtruth/Labels_{Train,Test}.txt`` (81 space-separated 0/1 ints per line, same order),
and optionally ``Concepts81.txt`` (or ``ConceptsList/Concepts81.txt``) with the concept names; without it the
standard 81 names below are used. Images with no label are dropped (official) unless ``keep_empty=True``.

``missing="unknown"`` (partial labels): a ``-1`` entry is an unknown label (official: negative), and an image
without any label, whose annotation is missing, has every label unknown when kept (``keep_empty=True``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sadcl.data.base import BadInput, MultiLabelDataset, dataset_from_rows, reader_options, resolve_class_names
from sadcl.data.images import DataError

_logger = logging.getLogger(__name__)

# The NUS-WIDE Concepts81.txt order (alphabetical), used when the file is not shipped with the data.
NUSWIDE_CONCEPTS = [
    "airport",
    "animal",
    "beach",
    "bear",
    "birds",
    "boats",
    "book",
    "bridge",
    "buildings",
    "cars",
    "castle",
    "cat",
    "cityscape",
    "clouds",
    "computer",
    "coral",
    "cow",
    "dancing",
    "dog",
    "earthquake",
    "elk",
    "fire",
    "fish",
    "flags",
    "flowers",
    "food",
    "fox",
    "frost",
    "garden",
    "glacier",
    "grass",
    "harbor",
    "horses",
    "house",
    "lake",
    "leaf",
    "map",
    "military",
    "moon",
    "mountain",
    "nighttime",
    "ocean",
    "person",
    "plane",
    "plants",
    "police",
    "protest",
    "railroad",
    "rainbow",
    "reflection",
    "road",
    "rocks",
    "running",
    "sand",
    "sign",
    "sky",
    "snow",
    "soccer",
    "sports",
    "statue",
    "street",
    "sun",
    "sunset",
    "surf",
    "swimmers",
    "tattoo",
    "temple",
    "tiger",
    "tower",
    "town",
    "toy",
    "train",
    "tree",
    "valley",
    "vehicle",
    "water",
    "waterfall",
    "wedding",
    "whales",
    "window",
    "zebra",
]


def _split_tag(split: str) -> str:
    tag = {"train": "Train", "test": "Test", "val": "Test"}.get(split.lower(), split)
    if tag not in ("Train", "Test"):
        raise DataError(f"NUS-WIDE split {split!r}; expected 'train' or 'test'")
    return tag


def read_nuswide(
    *,
    root: str | os.PathLike,
    split: str,
    keep_empty: bool = False,
    class_names: list[str] | str | None = None,
    image_dir: str | None = None,
    missing: str = "negative",
    skip_bad: bool = False,
    transform: Callable | None = None,
) -> MultiLabelDataset:
    """Read a NUS-WIDE split.

    Args:
        root: The ``nuswide`` directory.
        split: ``train`` or ``test`` (``val`` reads the test list, as the official code validates on it).
        keep_empty: Keep images without labels as all-zero rows (official: dropped).
        class_names: Concept list (sequence or file); default: ``Concepts81.txt`` if present, else the standard 81.
        image_dir: Image root; default ``root/Flickr``.
        missing: ``"negative"`` (official) or ``"unknown"``: see the module docstring.
        skip_bad: Log and skip malformed label lines and unreadable images.
        transform: Image transform.

    Returns:
        A MultiLabelDataset with ``targets [N, 81]``.
    """
    if missing not in ("negative", "unknown"):
        raise DataError(f"NUS-WIDE missing={missing!r}; expected 'negative' (official) or 'unknown' (partial labels)")
    root = Path(root)
    tag = _split_tag(split)
    if class_names is None:
        concept_file = next(
            (p for p in (root / "Concepts81.txt", root / "ConceptsList" / "Concepts81.txt") if p.is_file()), None
        )
        names = resolve_class_names(str(concept_file)) if concept_file else list(NUSWIDE_CONCEPTS)
    else:
        names = resolve_class_names(class_names)
    list_file = root / "ImageList" / f"{tag}Imagelist.txt"
    label_file = root / "Groundtruth" / f"Labels_{tag}.txt"
    for p in (list_file, label_file):
        if not p.is_file():
            raise DataError(f"{p}: not found (expected the NUS-WIDE layout ImageList/ + Groundtruth/ under {root})")
    with open(list_file, encoding="utf-8") as f:
        images = [ln.strip().replace("\\", "/") for ln in f.read().splitlines()]
    with open(label_file, encoding="utf-8") as f:
        label_lines = f.read().splitlines()
    # Trailing blank lines are not entries; interior blank lines are (and will be reported as malformed).
    while images and not images[-1]:
        images.pop()
    while label_lines and not label_lines[-1].strip():
        label_lines.pop()
    if len(images) != len(label_lines):
        raise DataError(
            f"{label_file}: {len(label_lines)} label lines but {list_file.name} lists {len(images)} images;"
            f" expected one label line per image"
        )
    img_root = Path(image_dir) if image_dir else root / "Flickr"
    bad = BadInput(str(label_file), skip_bad=skip_bad)
    paths, rows, unknowns, dropped = [], [], [], 0
    for lineno, (image, line) in enumerate(zip(images, label_lines), start=1):
        fields = line.split()
        if not image:
            bad.report(f"{list_file}: line {lineno}: empty image path")
            continue
        if len(fields) != len(names) or not all(x.lstrip("-").isdigit() for x in fields):
            bad.report(
                f"{label_file}: line {lineno}: expected {len(names)} space-separated integers, "
                f"got {len(fields)} field(s): {line[:80]!r}"
            )
            continue
        values = np.array(fields, dtype=np.int64)
        row = (values > 0).astype(np.float32)
        if not row.any() and not keep_empty:
            dropped += 1  # official behaviour, not an error
            continue
        unknown = np.zeros(len(names), bool)
        if missing == "unknown":
            unknown = values < 0 if row.any() else np.ones(len(names), bool)
        paths.append(str(img_root / image))
        rows.append(row)
        unknowns.append(unknown)
    bad.summary(len(paths))
    if dropped:
        _logger.info("NUS-WIDE %s: dropped %d images without labels (keep_empty=False, official)", tag, dropped)
    _logger.info("NUS-WIDE %s: %d images", tag, len(paths))
    return dataset_from_rows(paths, rows, names, unknown=unknowns, transform=transform, skip_bad=skip_bad)


def build(cfg: Any, split: str, transform: Callable | None = None) -> MultiLabelDataset:
    """``DataConfig`` -> :func:`read_nuswide` (options: keep_empty, class_names, image_dir, missing)."""
    o = reader_options(cfg.options, ("keep_empty", "class_names", "image_dir", "missing"), "nuswide")
    if cfg.root is None:
        raise DataError("NUS-WIDE: set data.root")
    return read_nuswide(
        root=cfg.root,
        split=split,
        keep_empty=bool(o.get("keep_empty", False)),
        class_names=o.get("class_names"),
        image_dir=o.get("image_dir"),
        missing=str(o.get("missing", "negative")),
        skip_bad=cfg.skip_bad,
        transform=transform,
    )
