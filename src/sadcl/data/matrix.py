"""Label-matrix CSV: one row per image, one column per class, values ``1`` / ``0`` / ``-1`` (positive / negative /
unknown), as COCO partial-label benchmarks and NUS-WIDE tag matrices ship them.

Layout: a header row ``image,<class 1>,...,<class C>`` (the image column's name is ``image_column``; every other
column is a class, in file order); image paths relative to ``image_root`` (default: the file's directory). Any other
cell value is an error naming the file, line and column (with ``skip_bad`` the row is skipped and counted).
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sadcl.data.base import BadInput, MultiLabelDataset, finalize, reader_options
from sadcl.data.images import DataError

_logger = logging.getLogger(__name__)

__all__ = ["VALUES", "build", "read_label_matrix"]

VALUES = {"1": 1, "0": 0, "-1": -1}
"""Accepted cell values (surrounding spaces and a ``.0`` suffix, as spreadsheets write them, are tolerated)."""


def _cell(value: str) -> int | None:
    v = value.strip()
    v = v[:-2] if v.endswith(".0") else v
    return VALUES.get(v)


def read_label_matrix(
    path: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    image_column: str = "image",
    delimiter: str | None = None,
    skip_bad: bool = False,
    transform: Callable | None = None,
) -> MultiLabelDataset:
    """Read a ``{1, 0, -1}`` label matrix (see the module docstring).

    Args:
        path: The CSV (``.tsv``: tab-separated) file.
        image_root: Base directory of relative image paths; default the file's directory.
        image_column: The header name of the image-path column.
        delimiter: Field delimiter (default ``,``, ``\\t`` for ``.tsv``).
        skip_bad: Log and skip malformed rows and unreadable images instead of raising.
        transform: Image transform.

    Returns:
        A MultiLabelDataset; the ``-1`` entries are ``dataset.ignore`` (None when there is none).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: label matrix not found")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte offset {e.start}); save the file as UTF-8") from None
    delimiter = delimiter or ("\t" if path.suffix.lower() == ".tsv" else ",")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise DataError(f"{path}: empty file; expected a header row '{image_column},<class 1>,...'") from None
    except csv.Error as e:
        raise DataError(f"{path}: line 1: malformed CSV header ({e})") from None
    if image_column not in header:
        raise DataError(f"{path}: line 1: header has no column {image_column!r} (columns: {header[:8]})")
    i_img = header.index(image_column)
    class_cols = [j for j in range(len(header)) if j != i_img]
    names = [header[j] for j in class_cols]
    if not names:
        raise DataError(f"{path}: line 1: no class columns; expected '{image_column},<class 1>,...,<class C>'")
    empty = [j + 1 for j in class_cols if not header[j]]
    dup = sorted({n for n in names if names.count(n) > 1})
    if empty or dup:
        raise DataError(f"{path}: line 1: class columns need unique, non-empty names (empty: {empty}, repeated: {dup})")
    bad = BadInput(str(path), skip_bad=skip_bad)
    root = Path(image_root) if image_root else path.parent
    paths, rows = [], []
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            bad.report(f"{path}: line {reader.line_num}: malformed CSV ({e})")
            continue
        lineno = reader.line_num
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            bad.report(
                f"{path}: line {lineno}: expected {len(header)} fields (image + {len(names)} classes), "
                f"got {len(fields)}"
            )
            continue
        values = [_cell(fields[j]) for j in class_cols]
        wrong = next((k for k, v in enumerate(values) if v is None), None)
        if wrong is not None:
            j = class_cols[wrong]
            bad.report(
                f"{path}: line {lineno}: column {j + 1} ({names[wrong]!r}): {fields[j]!r}; expected 1 (positive), "
                "0 (negative) or -1 (unknown)"
            )
            continue
        image = fields[i_img].strip()
        if not image:
            bad.report(f"{path}: line {lineno}: column {i_img + 1} ({image_column!r}): empty image path")
            continue
        p = Path(image)
        paths.append(str(p if p.is_absolute() else root / p))
        rows.append(values)
    bad.summary(len(paths))
    arr = np.asarray(rows, dtype=np.int64).reshape(len(rows), len(names))
    unknown = arr < 0
    ds = MultiLabelDataset(
        paths, (arr > 0).astype(np.float32), names, ignore=unknown if unknown.any() else None, transform=transform
    )
    _logger.info(
        "%s: %d images, %d classes, %.1f%% labels unknown",
        path,
        len(ds),
        len(names),
        100.0 * unknown.mean() if unknown.size else 0.0,
    )
    return finalize(ds, skip_bad=skip_bad)


def build(cfg: Any, split: str, transform: Callable | None = None) -> MultiLabelDataset:
    """``DataConfig`` -> :func:`read_label_matrix`.

    Options: ``matrix`` (the file, ``{split}`` replaced; default ``<root>/<split>.csv``), ``image_root``,
    ``image_column``, ``delimiter``.
    """
    o = reader_options(cfg.options, ("matrix", "image_root", "image_column", "delimiter"), "matrix")
    root = Path(cfg.root) if cfg.root else Path(".")
    path = Path(str(o.get("matrix", "{split}.csv")).format(split=split))
    return read_label_matrix(
        path if path.is_absolute() else root / path,
        image_root=o.get("image_root"),
        image_column=o.get("image_column", "image"),
        delimiter=o.get("delimiter"),
        skip_bad=cfg.skip_bad,
        transform=transform,
    )
