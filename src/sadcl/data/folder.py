"""Image folder + labels file: ``root/<labels file>`` with one image per line, ``relative/path.jpg label1 label2 ...``
(whitespace-separated; ``-cat`` / ``?cat`` mark explicit negatives / unknown labels as in a manifest,
:mod:`sadcl.data.manifest`), images under ``root/<images>``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sadcl.data.base import BadInput, MultiLabelDataset, reader_options
from sadcl.data.images import DataError
from sadcl.data.manifest import build_from_rows

__all__ = ["build", "read_image_folder"]


def read_image_folder(
    root: str | os.PathLike,
    *,
    labels_file: str = "labels.txt",
    images: str = "",
    class_names: Sequence[str] | str | None = None,
    allow_empty: bool = False,
    skip_bad: bool = False,
    transform: Callable | None = None,
    unlisted: str = "negative",
) -> MultiLabelDataset:
    """Read an image folder with a labels file (``relative/path.jpg label1 label2`` per line; ``-cat`` / ``?cat``
    mark explicit negatives / unknown labels as in a manifest).

    Args:
        root: Dataset directory.
        labels_file: Labels file name under ``root``.
        images: Image sub-directory of ``root`` the paths are relative to.
        class_names: Class list (sequence or file); default ``root/classes.txt`` if present, else sorted names found.
        allow_empty: Accept images listed without labels.
        skip_bad: Log and skip bad lines and unreadable images.
        transform: Image transform.
        unlisted: A class a line does not list is ``"negative"`` or ``"unknown"``.

    Returns:
        A MultiLabelDataset.
    """
    root = Path(root)
    lf = root / labels_file
    if not lf.is_file():
        raise DataError(f"{lf}: labels file not found (expected lines 'image.jpg label1 label2 ...')")
    if class_names is None and (root / "classes.txt").is_file():
        class_names = str(root / "classes.txt")
    rows = []
    with open(lf, encoding="utf-8") as f:
        for lineno, line in enumerate(f.read().splitlines(), start=1):
            fields = line.split()
            if fields and not line.lstrip().startswith("#"):
                rows.append((lineno, fields[0], fields[1:], {}))
    bad = BadInput(str(lf), skip_bad=skip_bad)
    return build_from_rows(
        lf,
        rows,
        image_root=root / images,
        class_names=class_names,
        allow_empty=allow_empty,
        bad=bad,
        transform=transform,
        unlisted=unlisted,
    )


def build(cfg: Any, split: str, transform: Callable | None = None) -> MultiLabelDataset:
    """``DataConfig`` -> :func:`read_image_folder`; ``options.labels_file`` may contain ``{split}``
    (default ``{split}.txt``)."""
    o = reader_options(cfg.options, ("labels_file", "images", "class_names", "allow_empty", "unlisted"), "folder")
    if cfg.root is None:
        raise DataError("folder: set data.root")
    return read_image_folder(
        cfg.root,
        labels_file=str(o.get("labels_file", "{split}.txt")).format(split=split),
        images=o.get("images", ""),
        class_names=o.get("class_names"),
        allow_empty=bool(o.get("allow_empty", False)),
        skip_bad=cfg.skip_bad,
        transform=transform,
        unlisted=str(o.get("unlisted", "negative")),
    )
