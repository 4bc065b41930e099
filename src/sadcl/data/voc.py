"""Pascal VOC 2007/2012: ``Annotations/*.xml`` + ``ImageSets/Main/<split>.txt`` -> MultiLabelDataset (docs/spec.md §5).

``difficult`` chooses what an object marked ``<difficult>1`` means:

- ``"drop"`` (official code): the object is skipped, so a class present only as difficult is a negative;
- ``"ignore"`` (the standard VOC protocol): such a class is marked in ``dataset.ignore`` so losses and metrics
  leave it out; a class that also has a non-difficult object is a plain positive.

Unlike the official ``line[:-1]``, image ids are stripped, so a last line without a newline keeps its last character.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sadcl.data.base import BadInput, MultiLabelDataset, dataset_from_rows, reader_options
from sadcl.data.images import DataError

_logger = logging.getLogger(__name__)

VOC_CLASSES = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]


def locate_voc(root: str | os.PathLike, year: int) -> Path:
    """The ``VOC<year>`` directory (holding ``Annotations``, ``ImageSets``, ``JPEGImages``) under ``root``."""
    root = Path(root)
    for d in (
        root,
        root / f"VOC{year}",
        root / "VOCdevkit" / f"VOC{year}",
        root / f"VOC{year}" / "VOCdevkit" / f"VOC{year}",
    ):
        if (d / "ImageSets" / "Main").is_dir() and (d / "Annotations").is_dir():
            return d
    raise DataError(
        f"{root}: no Pascal VOC {year} layout found (expected [VOCdevkit/]VOC{year}/ with Annotations/ "
        f"and ImageSets/Main/)"
    )


def _parse_objects(xml_path: Path) -> list[tuple[str, bool]]:
    """(class name, difficult) for every ``<object>``; errors name the file and line."""
    try:
        tree = ET.parse(xml_path)
    except FileNotFoundError:
        raise DataError(f"{xml_path}: annotation file not found") from None
    except ET.ParseError as e:
        line, col = e.position
        raise DataError(
            f"{xml_path}: line {line} column {col}: malformed XML ({e}); expected a VOC annotation"
        ) from None
    objects = []
    for k, obj in enumerate(tree.getroot().iter("object")):
        name = obj.findtext("name")
        if name is None or not name.strip():
            raise DataError(f"{xml_path}: object {k}: missing <name>; expected a class name")
        diff = (obj.findtext("difficult") or "0").strip()
        if diff not in ("0", "1"):
            raise DataError(f"{xml_path}: object {k} ({name.strip()}): <difficult> is {diff!r}; expected 0 or 1")
        objects.append((name.strip(), diff == "1"))
    return objects


def read_voc(
    *,
    root: str | os.PathLike,
    split: str,
    year: int = 2007,
    difficult: str = "drop",
    class_names: list[str] | None = None,
    skip_bad: bool = False,
    transform: Callable | None = None,
) -> MultiLabelDataset:
    """Read a Pascal VOC split.

    Args:
        root: Directory containing the VOC layout (see :func:`locate_voc`).
        split: An ``ImageSets/Main`` list name: ``trainval``, ``train``, ``val``, ``test``.
        year: 2007 or 2012.
        difficult: ``"drop"`` (official) or ``"ignore"`` (VOC protocol); see the module docstring.
        class_names: Defaults to the 20 VOC classes.
        skip_bad: Log and skip images whose XML is malformed/missing or names an unknown class, and unreadable images.
        transform: Image transform.

    Returns:
        A MultiLabelDataset; ``ignore`` is set when ``difficult == "ignore"``.
    """
    if difficult not in ("drop", "ignore"):
        raise DataError(f"VOC difficult={difficult!r}; expected 'drop' (official) or 'ignore' (VOC protocol)")
    base = locate_voc(root, year)
    names = list(class_names or VOC_CLASSES)
    col = {n: j for j, n in enumerate(names)}
    list_file = base / "ImageSets" / "Main" / f"{split}.txt"
    if not list_file.is_file():
        choices = sorted(p.stem for p in (base / "ImageSets" / "Main").glob("*.txt") if "_" not in p.stem)
        raise DataError(f"{list_file}: split list not found; available splits: {choices}")
    with open(list_file, encoding="utf-8") as f:
        ids = [line.split()[0] for line in f.read().splitlines() if line.strip()]
    bad = BadInput(str(list_file), skip_bad=skip_bad)
    paths, rows, ignores = [], [], []
    for image_id in ids:
        xml_path = base / "Annotations" / f"{image_id}.xml"
        try:
            objects = _parse_objects(xml_path)
            unknown = sorted({n for n, _ in objects if n not in col})
            if unknown:
                raise DataError(f"{xml_path}: unknown class name(s) {unknown}; expected one of {names}")
        except DataError as e:
            bad.report(str(e))
            continue
        row = np.zeros(len(names), np.float32)
        seen_difficult = np.zeros(len(names), bool)
        for name, is_difficult in objects:
            if is_difficult:
                seen_difficult[col[name]] = True
            else:
                row[col[name]] = 1.0
        paths.append(str(base / "JPEGImages" / f"{image_id}.jpg"))
        rows.append(row)
        ignores.append(seen_difficult & (row == 0))  # difficult-only classes
    bad.summary(len(paths))
    _logger.info("VOC%d %s: %d images (difficult=%s)", year, split, len(paths), difficult)
    unknown = ignores if difficult == "ignore" else None
    return dataset_from_rows(paths, rows, names, unknown=unknown, transform=transform, skip_bad=skip_bad)


def build(cfg: Any, split: str, transform: Callable | None = None, *, year: int | None = None) -> MultiLabelDataset:
    """``DataConfig`` -> :func:`read_voc` (options: year, difficult, class_names)."""
    o = reader_options(cfg.options, ("year", "difficult", "class_names"), "voc")
    if cfg.root is None:
        raise DataError("VOC: set data.root to the directory holding VOCdevkit/")
    return read_voc(
        root=cfg.root,
        split=split,
        year=int(year or o.get("year", 2007)),
        difficult=str(o.get("difficult", "drop")),
        class_names=o.get("class_names"),
        skip_bad=cfg.skip_bad,
        transform=transform,
    )
