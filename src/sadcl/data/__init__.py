"""Datasets: one reader per format, chosen by name from ``DATASETS``; loaders and transforms.

Every reader returns a :class:`MultiLabelDataset` (``ds[i] -> (image, target [C], ignore [C])``, ``ds.targets
[N, C]``, ``ds.class_names``, ``ds.ignore`` (unknown labels, or None), ``ds.paths``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch

from sadcl.data import coco, emoji, folder, hf, manifest, matrix, mom30, nuswide, vg500, voc
from sadcl.data.base import MultiLabelDataset, resolve_class_names
from sadcl.data.images import DataError, ImageLoadError, load_image, set_max_image_pixels
from sadcl.data.loader import build_loader, measure_loader

# name -> builder(cfg: DataConfig, split: str, transform) -> MultiLabelDataset
DATASETS: dict[str, Callable[..., MultiLabelDataset]] = {
    "coco": coco.build,
    "coco14": coco.build,
    "voc": voc.build,
    "voc2007": partial(voc.build, year=2007),
    "voc2012": partial(voc.build, year=2012),
    "nuswide": nuswide.build,
    "nus_wide": nuswide.build,
    "vg500": vg500.build,
    "manifest": manifest.build,
    "folder": folder.build,
    "matrix": matrix.build,
    "mom30": mom30.build,
    "emoji": emoji.build,
    "hf": hf.build,
}


def build_dataset(
    cfg: Any,
    split: str,
    transform: Callable | None = None,
    *,
    class_names: Sequence[str] | None = None,
    cache_images: bool = False,
) -> MultiLabelDataset:
    """Build the dataset of a ``DataConfig`` for one split.

    Args:
        cfg: A :class:`sadcl.config.DataConfig` (``format`` picks the reader; ``root``, ``options``, ``skip_bad``).
        split: Split name as the reader knows it (e.g. ``train``/``val``/``test``, VOC ``trainval``).
        transform: Applied to each RGB ``PIL.Image``.
        class_names: The class list the split must use: the training split's (or the checkpoint's). Readers that
            derive classes from the labels (``manifest``, ``folder`` without a class list) use it; any other
            mismatch (count, names or order) is an error, so no metric or threshold lands on the wrong column.
        cache_images: Decode and ``transform.prepare`` every image into RAM here
            (:meth:`MultiLabelDataset.cache_images`; needs a transform). A training run passes its
            ``data.cache_images``; one-pass commands (evaluate, calibration, previews) read the files instead.

    Returns:
        A MultiLabelDataset.
    """
    try:
        builder = DATASETS[cfg.format]
    except KeyError:
        raise ValueError(f"unknown dataset format {cfg.format!r}; valid: {sorted(DATASETS)}") from None
    if (
        class_names is not None
        and cfg.format in ("manifest", "folder", "hf")
        and "class_names" not in (cfg.options or {})
    ):
        cfg = dataclasses.replace(cfg, options={**(cfg.options or {}), "class_names": list(class_names)})
    if hasattr(cfg, "max_image_pixels"):  # data.max_image_pixels, before a reader checks any image (skip_bad)
        set_max_image_pixels(cfg.max_image_pixels)
    holdout = getattr(cfg, "val_holdout", None)
    if holdout and split in (cfg.train_split, cfg.val_split):
        full = builder(cfg, cfg.train_split, transform)
        train_idx, val_idx = holdout_indices(len(full), holdout)
        ds = full.subset(val_idx if split == cfg.val_split else train_idx)
    else:
        ds = builder(cfg, split, transform)
    if hasattr(cfg, "max_image_pixels"):  # carried by the dataset into spawned loader workers
        ds.max_image_pixels = cfg.max_image_pixels
    if class_names is not None and list(ds.class_names) != list(class_names):
        want, got = list(class_names), list(ds.class_names)
        if len(got) != len(want):
            detail = f"{len(got)} classes instead of {len(want)}"
        else:
            i = next(i for i, (a, b) in enumerate(zip(want, got)) if a != b)
            detail = f"column {i} is {got[i]!r} instead of {want[i]!r}"
        raise DataError(
            f"the {split!r} split of the {cfg.format} dataset does not use the training class list "
            f"({detail}); give every split the same class list (e.g. a classes.txt beside the "
            "manifests)"
        )
    if cache_images and transform is not None:  # without a transform nothing reads images
        ds.cache_images(what=f"the {split!r} split")
    return ds


def training_class_count(cfg: Any) -> int:
    """The class count of a ``DataConfig``'s training split, without generating or downloading anything (what
    ``model.num_classes: null`` becomes; ``sadcl train --print-config`` shows it).

    MOM-30 has its fixed 30 classes; a dataset built on first use (``emoji``) is counted from its ``classes.txt``
    once built; any other reader reads the split's label files (no image is decoded).

    Raises:
        DataError: The labels cannot be read yet (the message says why).
    """
    if cfg.format == "mom30":
        from sadcl.data.mom30_sources import CLASSES

        return len(CLASSES)
    if cfg.format == "emoji":
        listed = emoji.dataset_dir(cfg) / "classes.txt"
        if not listed.is_file():
            raise DataError(f"the emoji benchmark is built on first use ({listed} does not exist yet)")
        return len(resolve_class_names(str(listed)) or [])
    return len(build_dataset(cfg, cfg.train_split, None).class_names)


def holdout_indices(n: int, holdout: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Split ``range(n)`` into (kept, held-out) sorted index lists; ``holdout`` is a count (>= 1) or a fraction.

    The held-out set depends only on ``(n, holdout, seed)``, so every process and every command sees the same one.
    """
    k = int(holdout) if holdout >= 1 else int(round(holdout * n))
    if not 0 < k < n:
        raise ValueError(f"data.val_holdout={holdout} leaves {n - k} of {n} training images; choose a smaller holdout")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    held = sorted(perm[:k].tolist())
    held_set = set(held)
    return [i for i in range(n) if i not in held_set], held


__all__ = [
    "DATASETS",
    "DataError",
    "ImageLoadError",
    "MultiLabelDataset",
    "build_dataset",
    "build_loader",
    "holdout_indices",
    "load_image",
    "measure_loader",
    "training_class_count",
]
