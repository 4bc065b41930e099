"""Datasets: one reader per format, chosen by name from ``DATASETS``; loaders and transforms.

Every reader returns a :class:`MultiLabelDataset` (``ds[i] -> (image, target [C])``, ``ds.targets [N, C]``,
``ds.class_names``, ``ds.ignore``, ``ds.paths``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from sadcl.data import coco, manifest, mom30, nuswide, vg500, voc
from sadcl.data.base import MultiLabelDataset
from sadcl.data.images import DataError, ImageLoadError, load_image
from sadcl.data.loader import build_loader, loader_images_per_second, measure_loader

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
    "folder": manifest.build_folder,
    "mom30": mom30.build,
}


def build_dataset(cfg: Any, split: str, transform: Callable | None = None) -> MultiLabelDataset:
    """Build the dataset of a ``DataConfig`` for one split.

    Args:
        cfg: A :class:`sadcl.config.DataConfig` (``format`` picks the reader; ``root``, ``options``, ``skip_bad``).
        split: Split name as the reader knows it (e.g. ``train``/``val``/``test``, VOC ``trainval``).
        transform: Applied to each RGB ``PIL.Image``.

    Returns:
        A MultiLabelDataset.
    """
    try:
        builder = DATASETS[cfg.format]
    except KeyError:
        raise ValueError(f"unknown dataset format {cfg.format!r}; valid: {sorted(DATASETS)}") from None
    return builder(cfg, split, transform)


__all__ = ["DATASETS", "DataError", "ImageLoadError", "MultiLabelDataset", "build_dataset", "build_loader",
           "load_image", "loader_images_per_second", "measure_loader"]
