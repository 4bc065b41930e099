"""Hugging Face datasets on disk (``data.format: hf``): a ``save_to_disk`` folder or Parquet files.

``data.root`` is either

- a folder written by ``DatasetDict.save_to_disk`` (``dataset_dict.json``; a split named ``validation`` serves
  ``val`` when there is no ``val``), or by ``Dataset.save_to_disk`` (one split: the training split); or
- a folder of Parquet files, one split per file or shards: ``{split}.parquet``, ``{split}-*.parquet``,
  ``data/{split}-*.parquet`` (the Hub's layout) or ``{split}/*.parquet``; ``options.files`` gives another pattern
  (``{split}`` is replaced by the split name, relative to the root).

Columns (``options.image_column``, default ``image``; ``options.labels_column``, default ``labels``):

- images: an ``Image`` feature (bytes and/or a path), a path string (relative to ``options.image_root``, default
  the root) or raw bytes. Images stored as bytes are written once, as files, to the sadcl cache
  (``SADCL_CACHE/hf/<key>/<split>/``; the key follows the source files' names, sizes and times), so that every
  command reads them as it reads any image file;
- labels: a ``Sequence(ClassLabel)`` (its names are the class list), a ``ClassLabel`` (one label per image), a list
  of names, or one string of names joined by ``options.label_sep`` (default: whitespace).

The rest follows the manifest reader (:func:`sadcl.data.manifest.build_from_rows`): the class list is
``options.class_names`` (a list or a file), else ``classes.txt`` in the root, else the ``ClassLabel`` names, else the
sorted names found; every split uses the training split's list; ``-cat`` / ``?cat`` (and optional ``negatives`` /
``unknown`` columns) are partial labels, ``options.unlisted`` and ``options.allow_empty`` as for manifests; a bad
row (no image, no labels, an unknown class) stops with its split and row number, or is skipped with
``data.skip_bad``.

``datasets`` is an optional dependency (``pip install 'sadcl[hf]'``), imported only by this reader.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sadcl.data.base import BadInput, MultiLabelDataset, reader_options
from sadcl.data.images import DataError
from sadcl.data.manifest import _split_labels, build_from_rows
from sadcl.io import atomic_write_bytes

_logger = logging.getLogger(__name__)

__all__ = ["build", "read_hf"]

_OPTIONS = (
    "files",
    "image_column",
    "labels_column",
    "label_sep",
    "class_names",
    "image_root",
    "allow_empty",
    "unlisted",
)
_PARQUET_PATTERNS = (
    "{split}.parquet",
    "{split}-*.parquet",
    "{split}_*.parquet",
    "data/{split}-*.parquet",
    "{split}/*.parquet",
)
_ALIASES = {"val": "validation", "validation": "val"}
_BATCH = 256


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise DataError(
            "data.format=hf needs the optional 'datasets' package: pip install 'sadcl[hf]' (or pip install datasets)"
        ) from None
    return datasets


# ------------------------------------------------------------------------------------------------- the source
def _parquet_files(root: Path, split: str, pattern: str | None) -> list[Path]:
    patterns = [pattern] if pattern else list(_PARQUET_PATTERNS)
    for name in (split, _ALIASES.get(split)):
        if name is None:
            continue
        for p in patterns:
            found = sorted(root.glob(p.format(split=name)))
            if found:
                return found
    return []


def _open(root: Path, split: str, *, train_split: str, files: str | None) -> tuple[Any, Iterator[Any], str, list[Path]]:
    """``(features, batches of pyarrow tables/record batches, source name, files that identify it)`` of one split."""
    datasets = _datasets()
    if not root.is_dir():
        raise DataError(
            f"{root}: not a directory (data.root must be a save_to_disk folder or a folder of Parquet files)"
        )
    if files is None and ((root / "dataset_dict.json").is_file() or (root / "state.json").is_file()):
        try:
            loaded = datasets.load_from_disk(str(root))
        except Exception as e:  # datasets raises several types for a broken folder
            raise DataError(f"{root}: not a readable save_to_disk folder ({type(e).__name__}: {e})") from None
        if isinstance(loaded, datasets.DatasetDict):
            name = split if split in loaded else _ALIASES.get(split)
            if name not in loaded:
                raise DataError(f"{root}: no split {split!r} in the saved DatasetDict (splits: {sorted(loaded)})")
            ds, where = loaded[name], f"{root} [{name}]"
            ident = sorted((root / name).glob("*.arrow"))
        else:
            if split != train_split:
                raise DataError(
                    f"{root}: a saved Dataset holds one split, used as the training split; for {split!r} save a "
                    "DatasetDict with it, or set data.val_holdout (and data.test_split) accordingly"
                )
            ds, where, ident = loaded, f"{root} [{split}]", sorted(root.glob("*.arrow"))
        return ds.features, ds.with_format("arrow").iter(batch_size=_BATCH), where, ident
    found = _parquet_files(root, split, files)
    if not found:
        looked = [files] if files else list(_PARQUET_PATTERNS)
        raise DataError(
            f"{root}: no save_to_disk folder (dataset_dict.json) and no Parquet files for split {split!r} "
            f"(looked for {', '.join(p.format(split=split) for p in looked)})"
        )
    import pyarrow.parquet as pq

    try:
        first = pq.ParquetFile(found[0])
        features = datasets.Features.from_arrow_schema(first.schema_arrow)
    except Exception as e:
        raise DataError(f"{found[0]}: not a readable Parquet file ({type(e).__name__}: {e})") from None

    def batches() -> Iterator[Any]:
        for f in found:
            yield from pq.ParquetFile(f).iter_batches(batch_size=_BATCH)

    where = str(found[0]) if len(found) == 1 else f"{root / (files or found[0].name)} ({len(found)} files)"
    return features, batches(), where, found


def _class_label_names(feature: Any) -> list[str] | None:
    """The names of a ``ClassLabel`` or ``Sequence``/``List`` of ``ClassLabel`` feature, else None."""
    inner = getattr(feature, "feature", feature)
    if isinstance(inner, list) and len(inner) == 1:  # the [ClassLabel] shorthand
        inner = inner[0]
    names = getattr(inner, "names", None)
    return list(names) if isinstance(names, list) and type(inner).__name__ == "ClassLabel" else None


# ----------------------------------------------------------------------------------------------------- values
_MAGIC = ((b"\x89PNG", ".png"), (b"\xff\xd8", ".jpg"), (b"GIF8", ".gif"), (b"BM", ".bmp"), (b"II*\x00", ".tif"))


def _suffix(data: bytes, name: str | None) -> str:
    if name and Path(name).suffix:
        return Path(name).suffix.lower()
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return next((ext for magic, ext in _MAGIC if data.startswith(magic)), ".img")


def _image_value(value: Any, where: str) -> tuple[bytes | None, str | None]:
    """``(bytes, path)`` of one image cell (an ``Image`` struct, a path string or raw bytes)."""
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data is None and not path:
            raise DataError(f"{where}: the image has neither bytes nor a path")
        return data, path
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), None
    if isinstance(value, str) and value.strip():
        return None, value.strip()
    raise DataError(f"{where}: no image (expected an Image feature, a path or bytes, got {type(value).__name__})")


def _names(value: Any, label_names: list[str] | None, sep: str | None, where: str, field: str) -> list[str]:
    """Label tokens of one cell: ClassLabel ids through their names, lists of names, or a joined string."""
    if label_names is not None:
        ids = value if isinstance(value, list) else [value]
        out = []
        for i in ids:
            if not isinstance(i, int) or not 0 <= i < len(label_names):
                raise DataError(
                    f"{where}: column {field!r}: {i!r} is not a class id of its ClassLabel (0..{len(label_names) - 1})"
                )
            out.append(label_names[i])
        return out
    return _split_labels(value, sep, f"{where}: column {field!r}")


def read_hf(
    root: str | Path,
    split: str,
    *,
    train_split: str = "train",
    files: str | None = None,
    image_column: str = "image",
    labels_column: str = "labels",
    label_sep: str | None = None,
    class_names: Any = None,
    image_root: str | Path | None = None,
    allow_empty: bool = False,
    unlisted: str = "negative",
    skip_bad: bool = False,
    transform: Callable | None = None,
) -> MultiLabelDataset:
    """One split of a Hugging Face dataset on disk (see the module docstring for the layouts and columns).

    Returns:
        A MultiLabelDataset whose ``paths`` are image files (bytes written once to the sadcl cache) and whose
        origins name the split and row of each image.
    """
    from sadcl import sources

    root = Path(root)
    features, batches, where, ident = _open(root, split, train_split=train_split, files=files)
    for col in (image_column, labels_column):
        if col not in features:
            raise DataError(
                f"{where}: no column {col!r} (columns: {list(features)}); set options.image_column/labels_column"
            )
    label_names = _class_label_names(features[labels_column])
    side = {k: _class_label_names(features[k]) for k in ("negatives", "unknown") if k in features}
    if class_names is None and (root / "classes.txt").is_file():
        class_names = str(root / "classes.txt")
    if class_names is None and label_names is not None:
        class_names = label_names
    stamp = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in ident]
    key = hashlib.sha256(json.dumps([str(root.resolve()), split, image_column, stamp]).encode()).hexdigest()[:16]
    out_dir = sources.cache_dir() / "hf" / key / split
    bad = BadInput(where, skip_bad=skip_bad)
    rows: list[tuple[int, str, list[str], dict]] = []
    written = 0
    row = -1
    for batch in batches:
        cells = {k: batch.column(k).to_pylist() for k in (image_column, labels_column, *side)}
        for j in range(batch.num_rows):
            row += 1
            at = f"{where}: row {row}"
            try:
                data, path = _image_value(cells[image_column][j], at)
                if cells[labels_column][j] is None:
                    raise DataError(f"{at}: column {labels_column!r}: no labels")
                labels = _names(cells[labels_column][j], label_names, label_sep, at, labels_column)
                extra = {
                    k: _names(cells[k][j], names, label_sep, at, k) if cells[k][j] is not None else None
                    for k, names in side.items()
                }
            except DataError as e:
                bad.report(str(e))
                continue
            if data is not None:
                target = out_dir / f"{row:08d}{_suffix(data, path)}"
                if not target.is_file():
                    try:
                        atomic_write_bytes(target, data)
                    except OSError as e:
                        raise sources.cache_write_error(e) from None
                    written += 1
                path = str(target)
            rows.append((row, path, labels, extra))
    if written:
        _logger.info("%s: wrote %d images stored as bytes to %s (once)", where, written, out_dir)
    return build_from_rows(
        Path(where),
        rows,
        image_root=Path(image_root) if image_root else root,
        class_names=class_names,
        allow_empty=allow_empty,
        bad=bad,
        transform=transform,
        unlisted=unlisted,
        label_sep=label_sep,
        row_word="row",
    )


def build(cfg: Any, split: str, transform: Callable | None = None) -> MultiLabelDataset:
    """``DataConfig`` -> :func:`read_hf` (``data.root`` is the dataset folder; options as in the module docstring)."""
    o = reader_options(cfg.options, _OPTIONS, "hf")
    if not cfg.root:
        raise DataError("data.format=hf needs data.root: a save_to_disk folder or a folder of Parquet files")
    return read_hf(
        cfg.root,
        split,
        train_split=cfg.train_split,
        files=o.get("files"),
        image_column=o.get("image_column", "image"),
        labels_column=o.get("labels_column", "labels"),
        label_sep=o.get("label_sep"),
        class_names=o.get("class_names"),
        image_root=o.get("image_root"),
        allow_empty=bool(o.get("allow_empty", False)),
        unlisted=str(o.get("unlisted", "negative")),
        skip_bad=cfg.skip_bad,
        transform=transform,
    )
