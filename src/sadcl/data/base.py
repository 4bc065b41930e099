"""MultiLabelDataset: image paths + a multi-hot target matrix, shared by every reader; bad-input bookkeeping."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from sadcl.data.image_cache import cached_images
from sadcl.data.images import DataError, ImageLoadError, check_image, load_image, set_max_image_pixels

_logger = logging.getLogger(__name__)


class BadInput:
    """Raise on malformed input, or (``skip_bad=True``) log each problem and count it.

    Readers call :meth:`report` for every problem they find and :meth:`summary` once at the end, so a skipping run
    always leaves a log line per problem plus a total.
    """

    def __init__(self, source: str, *, skip_bad: bool) -> None:
        self.source = source
        self.skip_bad = skip_bad
        self.count = 0

    def report(self, message: str, entries: int = 1) -> None:
        """Raise :class:`DataError` with ``message``, or log it and count ``entries`` skips when ``skip_bad``."""
        if not self.skip_bad:
            raise DataError(message)
        self.count += entries
        _logger.warning("skipped: %s", message)

    def summary(self, kept: int) -> None:
        """Log the number of skipped entries (once, at the end of reading)."""
        if self.count:
            _logger.warning("%s: skipped %d bad entries (skip_bad=True); kept %d", self.source, self.count, kept)


def resolve_class_names(names: Sequence[str] | str | os.PathLike | None) -> list[str] | None:
    """A class list given as a sequence, a file (one name per line, blank lines ignored) or None."""
    if names is None:
        return None
    if isinstance(names, (str, os.PathLike)):
        with open(names, encoding="utf-8") as f:
            out = [line.strip() for line in f if line.strip()]
    else:
        out = [str(n) for n in names]
    dup = sorted({n for n in out if out.count(n) > 1})
    if dup:
        raise DataError(f"class list {names if isinstance(names, str) else ''}: duplicate class names {dup}")
    return out


class MultiLabelDataset(Dataset):
    """A multi-label image dataset: ``ds[i] -> (image, target [C] float32, ignore [C] bool)``.

    ``ignore`` marks the labels whose value is unknown (partial labels, VOC "difficult"): losses, the memory bank,
    prototypes and metrics leave them out (``loss.unknown_mode='negative'`` counts them as negatives instead). A
    dataset without a mask yields an all-False one, so every batch has the same three fields. Readers store 0 in
    ``targets`` at unknown entries, so code that ignores the mask sees today's "unknown = negative".

    Args:
        paths: N image file paths.
        targets: Multi-hot labels ``[N, C]`` (anything ``torch.as_tensor`` takes); stored as float32.
        class_names: The C class names, in target-column order.
        ignore: Optional bool ``[N, C]``: True = unknown label, left out of losses and metrics (partial labels,
            VOC "difficult"). None when every label is known.
        transform: Applied to the RGB ``PIL.Image``; None returns the PIL image.
        info: Optional per-sample records (e.g. MOM-30 boxes and scene), kept as plain data.
        origins: Optional N places that listed each image (``train.csv: line 5``): an image that cannot be read
            is reported with its place, so the user knows which row to fix.

    Attributes:
        max_image_pixels: The decompression-bomb limit to apply when reading (``data.max_image_pixels``, set by
            :func:`sadcl.data.build_dataset`; also in DataLoader worker processes); unset: Pillow's as it is.
    """

    max_image_pixels: Any = "pillow"  # not set: leave Pillow's limit as it is

    def __init__(
        self,
        paths: Sequence[str],
        targets: Any,
        class_names: Sequence[str],
        *,
        ignore: Any = None,
        transform: Callable | None = None,
        info: Sequence[dict] | None = None,
        origins: Sequence[str] | None = None,
    ) -> None:
        self.paths = [str(p) for p in paths]
        self.origins = None if origins is None else [str(o) for o in origins]
        if self.origins is not None and len(self.origins) != len(self.paths):
            raise ValueError(f"origins has {len(self.origins)} entries for {len(self.paths)} images")
        self.class_names = list(class_names)
        targets = torch.as_tensor(np.asarray(targets, dtype=np.float32)) if not torch.is_tensor(targets) else targets
        self.targets = targets.float().reshape(len(self.paths), len(self.class_names))
        self.ignore = (
            None if ignore is None else torch.as_tensor(np.asarray(ignore, dtype=bool)).reshape(self.targets.shape)
        )
        if self.ignore is not None:  # an unknown label's value is never used: store 0 (the "negative" reading)
            self.targets = self.targets.masked_fill(self.ignore, 0.0)
        self.transform = transform
        self.info = list(info) if info is not None else None
        self._image_cache: tuple[Callable | None, list[np.ndarray]] | None = None
        if self.info is not None and len(self.info) != len(self.paths):
            raise ValueError(f"info has {len(self.info)} records for {len(self.paths)} images")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Any, torch.Tensor, torch.Tensor]:
        image = self._image(index)
        ignore = self.ignore[index] if self.ignore is not None else torch.zeros(self.num_classes, dtype=torch.bool)
        return image, self.targets[index], ignore

    def _image(self, index: int) -> Any:
        """The transformed image of row ``index``: from the RAM cache where it was filled for this transform."""
        transform, cache = self.transform, self._image_cache
        if cache is not None:
            prepared_by, arrays = cache
            if prepared_by is None:  # decoded images: valid under any transform
                image = Image.fromarray(arrays[index])
                return image if transform is None else transform(image)
            if prepared_by is getattr(transform, "prepare", None):
                return transform.finish(Image.fromarray(arrays[index]))
        image = self.load(index)
        return image if transform is None else transform(image)

    def where(self, index: int) -> str | None:
        """Where image ``index`` was listed (``train.csv: line 5``), or None when the reader does not say."""
        return None if self.origins is None else self.origins[index]

    def load(self, index: int) -> Image.Image:
        """Image ``index`` decoded to RGB (:func:`sadcl.data.images.load_image`); an unreadable one raises
        :class:`ImageLoadError` naming the file and the line that listed it."""
        if self.max_image_pixels != "pillow":
            set_max_image_pixels(self.max_image_pixels)  # a spawned worker process starts with Pillow's default
        try:
            return load_image(self.paths[index])
        except ImageLoadError as e:
            where = self.where(index)
            raise ImageLoadError(f"{where}: {e}" if where else str(e)) from None

    def cache_images(self, *, what: str = "dataset", fill: bool = True) -> MultiLabelDataset:
        """Decode (and ``transform.prepare``) every image once and keep it in RAM (``data.cache_images``).

        Items then come out bit-identical to the uncached ones (see :mod:`sadcl.data.image_cache`); a transform set
        afterwards with another ``prepare`` reads the files again. With ``fill=False`` the images are used only
        when the process already holds them (with this ``prepare``); otherwise the files are read. Returns ``self``.
        """
        prepare = getattr(self.transform, "prepare", None)
        if self.max_image_pixels != "pillow":
            set_max_image_pixels(self.max_image_pixels)
        try:
            arrays = cached_images(self.paths, prepare, what=what, fill=fill)
        except ImageLoadError as e:
            raise ImageLoadError(self._with_origin(str(e))) from None
        self._image_cache = None if arrays is None else (prepare, arrays)
        return self

    def _with_origin(self, message: str) -> str:
        """An image error message (``PATH: ...``) prefixed with the place that listed ``PATH``, when known."""
        if self.origins is None:
            return message
        for path, origin in zip(self.paths, self.origins):
            if message.startswith(f"{path}: "):
                return f"{origin}: {message}"
        return message

    def known_mask(self) -> torch.Tensor:
        """Bool ``[N, C]``: True where the label is known (everything when there is no ``ignore`` mask)."""
        return torch.ones_like(self.targets, dtype=torch.bool) if self.ignore is None else ~self.ignore

    def subset(self, indices: Sequence[int]) -> MultiLabelDataset:
        """A new dataset with the given rows (same classes and transform)."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        out = MultiLabelDataset(
            [self.paths[i] for i in idx.tolist()],
            self.targets[idx],
            self.class_names,
            ignore=None if self.ignore is None else self.ignore[idx],
            transform=self.transform,
            info=None if self.info is None else [self.info[i] for i in idx.tolist()],
            origins=None if self.origins is None else [self.origins[i] for i in idx.tolist()],
        )
        if self.max_image_pixels != "pillow":
            out.max_image_pixels = self.max_image_pixels
        return out

    def drop_unreadable(self, *, threads: int | None = None) -> MultiLabelDataset:
        """Decode every image once and drop the ones that fail, logging each file and the total.

        This is what ``skip_bad=True`` does for images: checking up front keeps indices, targets and sampler
        lengths consistent (substituting at ``__getitem__`` time would hide the count inside loader workers).
        """
        threads = threads or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(threads) as pool:  # PIL decoding releases the GIL
            errors = list(pool.map(check_image, self.paths))
        bad = [i for i, e in enumerate(errors) if e is not None]
        for i in bad:
            _logger.warning("skipped unreadable image: %s", self._with_origin(errors[i]))
        if not bad:
            return self
        _logger.warning("skipped %d of %d images that could not be read (skip_bad=True)", len(bad), len(self))
        bad_set = set(bad)
        return self.subset([i for i in range(len(self)) if i not in bad_set])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n={len(self)}, classes={self.num_classes}, "
            f"labels/img={self.targets.sum(1).mean().item() if len(self) else 0:.2f}, "
            f"ignore={'yes' if self.ignore is not None else 'no'})"
        )


def finalize(dataset: MultiLabelDataset, *, skip_bad: bool, check_files: bool = True) -> MultiLabelDataset:
    """The common end of every reader: with ``skip_bad`` drop unreadable images; else fail early on missing files.

    Without ``skip_bad`` only existence is checked (cheap ``stat``); a corrupt file then raises when it is loaded,
    naming the file.
    """
    if skip_bad:
        return dataset.drop_unreadable()
    if check_files:
        for i, p in enumerate(dataset.paths):
            if not os.path.isfile(p):
                where = dataset.where(i)
                raise DataError(
                    f"{where + ': ' if where else ''}{p}: image file not found (listed by the dataset's label "
                    "files); pass skip_bad=True to skip missing images"
                )
    return dataset


def dataset_from_rows(
    paths: Sequence[str],
    rows: Sequence[np.ndarray],
    class_names: Sequence[str],
    *,
    unknown: Sequence[np.ndarray] | None = None,
    info: list[dict[str, Any]] | None = None,
    transform: Callable | None = None,
    skip_bad: bool = False,
    origins: Sequence[str] | None = None,
) -> MultiLabelDataset:
    """The common end of the readers that collect one label row per image, then :func:`finalize`.

    Args:
        paths: Image paths [N].
        rows: Label rows, each [C] in {0, 1}.
        class_names: The C class names.
        unknown: Per-image bool rows [C] of unknown labels; the mask is kept only when some entry is set (a fully
            labelled dataset has ``ignore=None``).
        info: Per-image extra fields, kept only when any image has some.
        origins: Per-image place in the label file (``train.csv: line 5``), for error messages.
    """
    c = len(class_names)
    targets = np.stack(rows).astype(np.float32) if len(rows) else np.zeros((0, c), np.float32)
    mask = None
    if unknown is not None and len(unknown):
        mask = np.stack(unknown).astype(bool)
        mask = mask if mask.any() else None
    ds = MultiLabelDataset(
        list(paths),
        targets,
        list(class_names),
        ignore=mask,
        transform=transform,
        info=info if info and any(info) else None,
        origins=origins,
    )
    return finalize(ds, skip_bad=skip_bad)


def reader_options(options: dict[str, Any] | None, allowed: Sequence[str], reader: str) -> dict[str, Any]:
    """Copy of ``data.options``, rejecting keys the reader does not know (a typo must not be silently ignored)."""
    opts = dict(options or {})
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise DataError(f"data.options for the {reader!r} reader: unknown key(s) {unknown}; valid: {sorted(allowed)}")
    return opts
