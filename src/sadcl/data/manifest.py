"""Generic manifests: a CSV/TSV or JSONL file of (image path, label names), and an image folder + labels file.

CSV/TSV: a header row; ``image_column`` holds the path, ``labels_column`` the label names joined by ``label_sep``
(default: any whitespace). JSONL: one object per line; ``labels`` may be a list of names or a joined string.
Relative image paths are resolved against ``image_root`` (default: the manifest's directory).

Folder layout (:func:`read_image_folder`): ``root/<labels file>`` with one image per line,
``relative/path.jpg label1 label2 ...`` (whitespace-separated), images under ``root/<images>``.

The class list is, in order of preference: ``class_names`` given (sequence or file, one name per line), a
``classes.txt`` next to the manifest, or every label seen in the manifest, sorted.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sadcl.data.base import BadInput, MultiLabelDataset, finalize, reader_options, resolve_class_names
from sadcl.data.images import DataError

_logger = logging.getLogger(__name__)


def _split_labels(value: Any, sep: str | None, where: str) -> list[str]:
    if value is None:
        raise DataError(f"{where}: missing labels field")
    if isinstance(value, list):
        if not all(isinstance(v, str) for v in value):
            raise DataError(f"{where}: expected a list of label names (strings), got {value!r}")
        return [v.strip() for v in value if v.strip()]
    if not isinstance(value, str):
        raise DataError(f"{where}: expected label names as a string or list, got {type(value).__name__}")
    return [v.strip() for v in value.split(sep) if v.strip()]


def _read_rows(path: Path, *, image_column: str, labels_column: str, label_sep: str | None,
               bad: BadInput) -> list[tuple[int, str, list[str], dict]]:
    """(line number, image, label names, extra fields) per entry; format errors go to ``bad``."""
    rows = []
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path}: line {lineno}"
                try:
                    rec = json.loads(line)
                    if not isinstance(rec, dict):
                        raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
                    if not isinstance(rec.get(image_column), str):
                        raise DataError(f"{where}: field {image_column!r}: expected the image path as a string")
                    labels = _split_labels(rec.get(labels_column), label_sep, f"{where}: field {labels_column!r}")
                except json.JSONDecodeError as e:
                    bad.report(f"{where} column {e.colno}: malformed JSON ({e.msg}); expected one object per line")
                    continue
                except DataError as e:
                    bad.report(str(e))
                    continue
                extra = {k: v for k, v in rec.items() if k not in (image_column, labels_column)}
                rows.append((lineno, rec[image_column], labels, extra))
        return rows
    if suffix not in (".csv", ".tsv", ".txt"):
        raise DataError(f"{path}: unknown manifest type {suffix!r}; expected .csv, .tsv or .jsonl")
    delimiter = "\t" if suffix == ".tsv" else ","
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, strict=True)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path}: empty manifest; expected a header row") from None
        except csv.Error as e:
            raise DataError(f"{path}: line 1: malformed CSV header ({e})") from None
        header = [h.strip() for h in header]
        for col in (image_column, labels_column):
            if col not in header:
                raise DataError(f"{path}: line 1: header has no column {col!r} (columns: {header}); set "
                                f"image_column/labels_column")
        i_img, i_lab = header.index(image_column), header.index(labels_column)
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                bad.report(f"{path}: line {reader.line_num}: malformed CSV ({e})")
                continue
            lineno = reader.line_num
            if not fields or all(not x.strip() for x in fields):
                continue
            if len(fields) != len(header):
                bad.report(f"{path}: line {lineno}: expected {len(header)} fields ({', '.join(header)}), "
                           f"got {len(fields)}")
                continue
            extra = {h: v for j, (h, v) in enumerate(zip(header, fields)) if j not in (i_img, i_lab)}
            rows.append((lineno, fields[i_img].strip(),
                         _split_labels(fields[i_lab], label_sep, f"{path}: line {lineno}"), extra))
    return rows


def _build(source: Path, rows: list[tuple[int, str, list[str], dict]], *, image_root: Path,
           class_names: Sequence[str] | str | None, allow_empty: bool, bad: BadInput, skip_bad: bool,
           transform: Callable | None) -> MultiLabelDataset:
    names = resolve_class_names(class_names)
    if names is None:
        names = sorted({label for _, _, labels, _ in rows for label in labels})
        _logger.info("%s: no class list given; using the %d label names found, sorted", source, len(names))
    col = {n: j for j, n in enumerate(names)}
    paths, targets, info = [], [], []
    for lineno, image, labels, extra in rows:
        where = f"{source}: line {lineno}"
        unknown = sorted({lab for lab in labels if lab not in col})
        if unknown:
            bad.report(f"{where}: unknown class name(s) {unknown}; expected names from the class list "
                       f"({len(names)} classes, e.g. {names[:5]})")
            continue
        if not labels and not allow_empty:
            bad.report(f"{where}: no labels for {image!r}; expected at least one (set allow_empty to keep it)")
            continue
        row = np.zeros(len(names), np.float32)
        row[[col[lab] for lab in labels]] = 1.0
        p = Path(image)
        paths.append(str(p if p.is_absolute() else image_root / p))
        targets.append(row)
        info.append(extra)
    bad.summary(len(paths))
    arr = np.stack(targets) if targets else np.zeros((0, len(names)), np.float32)
    keep_info = any(info)
    ds = MultiLabelDataset(paths, arr, names, transform=transform, info=info if keep_info else None)
    _logger.info("%s: %d images, %d classes", source, len(ds), len(names))
    return finalize(ds, skip_bad=skip_bad)


def read_manifest(path: str | os.PathLike, *, image_root: str | os.PathLike | None = None,
                  class_names: Sequence[str] | str | None = None, image_column: str = "image",
                  labels_column: str = "labels", label_sep: str | None = None, allow_empty: bool = False,
                  skip_bad: bool = False, transform: Callable | None = None) -> MultiLabelDataset:
    """Read a CSV/TSV/JSONL manifest (see the module docstring).

    Args:
        path: The manifest file.
        image_root: Base directory of relative image paths; default the manifest's directory.
        class_names: Class list (sequence or file); default ``classes.txt`` beside the manifest, else the sorted
            label names found.
        image_column: Column/key holding the image path.
        labels_column: Column/key holding the labels.
        label_sep: Separator of joined label names; None splits on whitespace.
        allow_empty: Accept rows without labels (all-negative rows) instead of treating them as errors.
        skip_bad: Log and skip malformed rows and unreadable images instead of raising.
        transform: Image transform.

    Returns:
        A MultiLabelDataset; extra columns/keys are kept per image in ``dataset.info``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    if class_names is None and (path.parent / "classes.txt").is_file():
        class_names = str(path.parent / "classes.txt")
    bad = BadInput(str(path), skip_bad=skip_bad)
    rows = _read_rows(path, image_column=image_column, labels_column=labels_column, label_sep=label_sep, bad=bad)
    return _build(path, rows, image_root=Path(image_root) if image_root else path.parent, class_names=class_names,
                  allow_empty=allow_empty, bad=bad, skip_bad=skip_bad, transform=transform)


def read_image_folder(root: str | os.PathLike, *, labels_file: str = "labels.txt", images: str = "",
                      class_names: Sequence[str] | str | None = None, allow_empty: bool = False,
                      skip_bad: bool = False, transform: Callable | None = None) -> MultiLabelDataset:
    """Read an image folder with a labels file (``relative/path.jpg label1 label2`` per line).

    Args:
        root: Dataset directory.
        labels_file: Labels file name under ``root``.
        images: Image sub-directory of ``root`` the paths are relative to.
        class_names: Class list (sequence or file); default ``root/classes.txt`` if present, else sorted names found.
        allow_empty: Accept images listed without labels.
        skip_bad: Log and skip bad lines and unreadable images.
        transform: Image transform.

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
    return _build(lf, rows, image_root=root / images, class_names=class_names, allow_empty=allow_empty, bad=bad,
                  skip_bad=skip_bad, transform=transform)


_MANIFEST_OPTIONS = ("manifest", "image_root", "class_names", "image_column", "labels_column", "label_sep",
                     "allow_empty")


def build(cfg: Any, split: str, transform: Callable | None = None) -> MultiLabelDataset:
    """``DataConfig`` -> :func:`read_manifest`.

    ``options.manifest`` is the file (``{split}`` is replaced by the split name); default ``<root>/<split>.csv``, or
    ``<root>/<split>.jsonl`` when only that exists.
    """
    o = reader_options(cfg.options, _MANIFEST_OPTIONS, "manifest")
    root = Path(cfg.root) if cfg.root else Path(".")
    if o.get("manifest"):
        path = Path(str(o["manifest"]).format(split=split))
        path = path if path.is_absolute() else root / path
    else:
        candidates = [root / f"{split}{ext}" for ext in (".csv", ".jsonl", ".tsv")]
        path = next((p for p in candidates if p.is_file()), candidates[0])
    return read_manifest(path, image_root=o.get("image_root"), class_names=o.get("class_names"),
                         image_column=o.get("image_column", "image"), labels_column=o.get("labels_column", "labels"),
                         label_sep=o.get("label_sep"), allow_empty=bool(o.get("allow_empty", False)),
                         skip_bad=cfg.skip_bad, transform=transform)


def build_folder(cfg: Any, split: str, transform: Callable | None = None) -> MultiLabelDataset:
    """``DataConfig`` -> :func:`read_image_folder`; ``options.labels_file`` may contain ``{split}``
    (default ``{split}.txt``)."""
    o = reader_options(cfg.options, ("labels_file", "images", "class_names", "allow_empty"), "folder")
    if cfg.root is None:
        raise DataError("folder: set data.root")
    return read_image_folder(cfg.root, labels_file=str(o.get("labels_file", "{split}.txt")).format(split=split),
                             images=o.get("images", ""), class_names=o.get("class_names"),
                             allow_empty=bool(o.get("allow_empty", False)), skip_bad=cfg.skip_bad,
                             transform=transform)
