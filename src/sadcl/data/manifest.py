"""Generic manifests: a CSV/TSV or JSONL file of (image path, label names); the label-field syntax both manifests and
image folders (:mod:`sadcl.data.folder`) use.

CSV/TSV: a header row; ``image_column`` holds the path, ``labels_column`` the label names joined by ``label_sep``
(default: any whitespace). JSONL: one object per line; ``labels`` may be a list of names or a joined string.
Relative image paths are resolved against ``image_root`` (default: the manifest's directory).

The class list is, in order of preference: ``class_names`` given (sequence or file, one name per line), a
``classes.txt`` next to the manifest, or every label seen in the manifest, sorted.

Partial labels (both layouts): in the labels field ``cat`` is a positive, ``-cat`` an explicit negative and ``?cat``
an unknown label (a token that is itself a class-list name is that class, so names may start with ``-``/``?``). CSV
columns / JSONL fields ``unknown`` and ``negatives`` (names, joined like the labels) say the same. A class a row does
not list is negative (``unlisted="negative"``, the default) or unknown (``unlisted="unknown"``: only the listed
labels are known). Unknown labels are in ``dataset.ignore``; a class listed with two states is an error naming the
line.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sadcl.data.base import BadInput, MultiLabelDataset, dataset_from_rows, reader_options, resolve_class_names
from sadcl.data.images import DataError
from sadcl.data.partial_labels import UNLISTED, label_states, split_names

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


def _read_text(path: Path) -> str:
    """The file as text: UTF-8 with or without a byte-order mark (Excel's "CSV UTF-8"); other encodings are an
    error naming the line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(
            f"{path}: line {line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the file as UTF-8 "
            '(e.g. "CSV UTF-8" in a spreadsheet program)'
        ) from None


def _read_rows(
    path: Path,
    *,
    image_column: str,
    labels_column: str,
    label_sep: str | None,
    bad: BadInput,
    delimiter: str | None = None,
) -> list[tuple[int, str, list[str], dict]]:
    """(line number, image, label names, extra fields) per entry; format errors go to ``bad``."""
    rows = []
    suffix = path.suffix.lower()
    text = _read_text(path) if suffix in (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".txt") else ""
    if suffix in (".jsonl", ".ndjson", ".json"):
        for lineno, line in enumerate(text.split("\n"), start=1):  # not splitlines(): JSON strings may hold U+2028
            line = line.rstrip("\r")
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
    if delimiter is not None and len(delimiter) != 1:
        raise DataError(f"{path}: delimiter must be one character, got {delimiter!r}")
    delimiter = delimiter or ("\t" if suffix == ".tsv" else ",")
    f = io.StringIO(text, newline="")
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
            raise DataError(
                f"{path}: line 1: header has no column {col!r} (columns: {header}); set image_column/labels_column"
            )
    i_img, i_lab = header.index(image_column), header.index(labels_column)
    while True:
        first = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            lost = reader.line_num - first + 1
            span = f"lines {first}-{reader.line_num}" if lost > 1 else f"line {first}"
            bad.report(f"{path}: {span}: malformed CSV ({e}); {lost} line(s) dropped", entries=lost)
            continue
        lineno = first
        if reader.line_num > first and any("\n" in x or "\r" in x for x in fields):
            # A quote opened on this line and closed lines later: the lines in between became one field.
            lost = reader.line_num - first + 1
            bad.report(
                f"{path}: lines {first}-{reader.line_num}: a quoted field opened on line {first} spans "
                f"{lost} lines (unclosed quote?); {lost} line(s) dropped",
                entries=lost,
            )
            continue
        if not fields or all(not x.strip() for x in fields):
            continue
        if len(fields) != len(header):
            bad.report(f"{path}: line {lineno}: expected {len(header)} fields ({', '.join(header)}), got {len(fields)}")
            continue
        extra = {h: v for j, (h, v) in enumerate(zip(header, fields)) if j not in (i_img, i_lab)}
        rows.append(
            (lineno, fields[i_img].strip(), _split_labels(fields[i_lab], label_sep, f"{path}: line {lineno}"), extra)
        )
    return rows


def build_from_rows(
    source: Path,
    rows: list[tuple[int, str, list[str], dict]],
    *,
    image_root: Path,
    class_names: Sequence[str] | str | None,
    allow_empty: bool,
    bad: BadInput,
    transform: Callable | None,
    unlisted: str = "negative",
    label_sep: str | None = None,
    row_word: str = "line",
) -> MultiLabelDataset:
    """Rows ``(line number, image, label tokens, extra fields)`` of a manifest or a labels file -> the dataset, by
    the label-field syntax of the module docstring (errors name ``source`` and the line; ``row_word`` says what the
    number counts, e.g. ``row`` for a Hugging Face dataset)."""
    if unlisted not in UNLISTED:
        raise DataError(f"{source}: unlisted={unlisted!r}; expected one of {list(UNLISTED)}")
    names = resolve_class_names(class_names)
    given = set(names) if names is not None else None
    parsed = []
    for lineno, image, labels, extra in rows:
        extra, where = dict(extra), f"{source}: {row_word} {lineno}"
        try:
            negatives, unknown = (
                split_names(extra.pop(k, None), label_sep, f"{where}: field {k!r}") for k in ("negatives", "unknown")
            )
            states = label_states(labels, negatives=negatives, unknown=unknown, names=given, where=where)
        except DataError as e:
            bad.report(str(e))
            continue
        parsed.append((lineno, image, states, extra))
    if names is None:
        names = sorted({label for _, _, states, _ in parsed for group in states for label in group})
        _logger.info("%s: no class list given; using the %d label names found, sorted", source, len(names))
        joined = {}
        for lineno, _, states, _ in parsed:
            for label in (lab for group in states for lab in group):
                sep = next((c for c in ";,|" if c in label), None)
                if sep:
                    joined.setdefault(sep, []).append(lineno)
        for sep, lines in joined.items():
            _logger.warning(
                "%s: label names contain %r on %d line(s) (e.g. line %s), so they became classes of their "
                "own; if %r separates labels, set data.options.label_sep=%r (or give a classes.txt)",
                source,
                sep,
                len(lines),
                ", ".join(map(str, lines[:5])),
                sep,
                sep,
            )
    seen_at: dict[str, int] = {}
    duplicates = []
    for lineno, image, _, _ in parsed:
        if image in seen_at:
            duplicates.append(f"{row_word} {lineno} repeats {row_word} {seen_at[image]} ({image})")
        else:
            seen_at[image] = lineno
    if duplicates:
        _logger.warning(
            "%s: %d image(s) listed more than once, each entry kept (they weigh double): %s%s",
            source,
            len(duplicates),
            "; ".join(duplicates[:5]),
            "; ..." if len(duplicates) > 5 else "",
        )
    col = {n: j for j, n in enumerate(names)}
    paths, targets, ignores, info, origins = [], [], [], [], []
    for lineno, image, (pos, neg, unk), extra in parsed:
        where = f"{source}: {row_word} {lineno}"
        unknown = sorted({lab for lab in (*pos, *neg, *unk) if lab not in col})
        if unknown:
            bad.report(
                f"{where}: unknown class name(s) {unknown}; expected names from the class list "
                f"({len(names)} classes, e.g. {names[:5]}){_separator_hint(names, label_sep)}"
            )
            continue
        if not (pos or neg or unk) and not allow_empty:
            bad.report(f"{where}: no labels for {image!r}; expected at least one (set allow_empty to keep it)")
            continue
        row = np.zeros(len(names), np.float32)
        row[[col[lab] for lab in pos]] = 1.0
        ig = np.zeros(len(names), bool)
        if unlisted == "unknown":
            ig[:] = True
            ig[[col[lab] for lab in (*pos, *neg)]] = False
        ig[[col[lab] for lab in unk]] = True
        p = Path(image)
        paths.append(str(p if p.is_absolute() else image_root / p))
        targets.append(row)
        ignores.append(ig)
        info.append(extra)
        origins.append(where)
    bad.summary(len(paths))
    _logger.info("%s: %d images, %d classes", source, len(paths), len(names))
    return dataset_from_rows(
        paths, targets, names, unknown=ignores, info=info, transform=transform, skip_bad=bad.skip_bad, origins=origins
    )


def _separator_hint(names: Sequence[str], label_sep: str | None) -> str:
    """A hint for unknown names that come from splitting a class name: names with spaces need a label_sep."""
    spaced = [n for n in names if (label_sep is None and any(c.isspace() for c in n)) or (label_sep and label_sep in n)]
    if not spaced:
        return ""
    sep = "spaces" if label_sep is None else repr(label_sep)
    return (
        f"; the class list has names containing {'a space' if label_sep is None else sep} (e.g. {spaced[0]!r}) and "
        f"labels are split on {sep}: write the labels with another separator and set it, e.g. "
        f"data.options.label_sep=';' with {';'.join(spaced[:1] + [n for n in names if n not in spaced][:1])!r}"
    )


def read_manifest(
    path: str | os.PathLike,
    *,
    image_root: str | os.PathLike | None = None,
    class_names: Sequence[str] | str | None = None,
    image_column: str = "image",
    labels_column: str = "labels",
    label_sep: str | None = None,
    allow_empty: bool = False,
    skip_bad: bool = False,
    transform: Callable | None = None,
    delimiter: str | None = None,
    unlisted: str = "negative",
) -> MultiLabelDataset:
    """Read a CSV/TSV/JSONL manifest (see the module docstring).

    Args:
        path: The manifest file.
        image_root: Base directory of relative image paths; default the manifest's directory.
        class_names: Class list (sequence or file); default ``classes.txt`` beside the manifest, else the sorted
            label names found.
        image_column: Column/key holding the image path.
        labels_column: Column/key holding the labels.
        label_sep: Separator of joined label names (e.g. ``";"``); None splits on whitespace. Without a class list,
            names that contain ``;``, ``,`` or ``|`` are warned about (naming the lines).
        allow_empty: Accept rows without labels (all-negative rows) instead of treating them as errors.
        skip_bad: Log and skip malformed rows and unreadable images instead of raising.
        transform: Image transform.
        delimiter: CSV field delimiter (default ``,``; ``\t`` for ``.tsv``). Files are read as UTF-8, with or
            without a byte-order mark.
        unlisted: A class a row does not list is ``"negative"`` or ``"unknown"`` (partial labels).

    Returns:
        A MultiLabelDataset (``ignore`` holds the unknown labels, None if there are none); extra columns/keys are
        kept per image in ``dataset.info``. An image listed twice is
        kept twice, with a warning naming the lines.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    if class_names is None and (path.parent / "classes.txt").is_file():
        class_names = str(path.parent / "classes.txt")
    bad = BadInput(str(path), skip_bad=skip_bad)
    rows = _read_rows(
        path, image_column=image_column, labels_column=labels_column, label_sep=label_sep, bad=bad, delimiter=delimiter
    )
    return build_from_rows(
        path,
        rows,
        image_root=Path(image_root) if image_root else path.parent,
        class_names=class_names,
        allow_empty=allow_empty,
        bad=bad,
        transform=transform,
        unlisted=unlisted,
        label_sep=label_sep,
    )


_MANIFEST_OPTIONS = (
    "manifest",
    "image_root",
    "class_names",
    "image_column",
    "labels_column",
    "label_sep",
    "allow_empty",
    "delimiter",
    "unlisted",
)


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
    return read_manifest(
        path,
        image_root=o.get("image_root"),
        class_names=o.get("class_names"),
        image_column=o.get("image_column", "image"),
        labels_column=o.get("labels_column", "labels"),
        label_sep=o.get("label_sep"),
        allow_empty=bool(o.get("allow_empty", False)),
        skip_bad=cfg.skip_bad,
        transform=transform,
        delimiter=o.get("delimiter"),
        unlisted=str(o.get("unlisted", "negative")),
    )
