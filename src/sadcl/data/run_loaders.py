"""The loaders of a run's ``Config``: the one evaluation loader, and the loader-throughput probe.

:func:`build_eval_loader` is how every split is scored: training's validation and test loaders, ``sadcl evaluate``,
``tune-thresholds``, ``report`` and the prototype pass all read a split through it (the evaluation transform, the
checkpoint's class list, the run's evaluation batch size and workers). This module sits above the reader registry
(:func:`sadcl.data.build_dataset`), which it uses.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch.utils.data import DataLoader

from sadcl import distributed as D
from sadcl.config import Config, ConfigError
from sadcl.data import build_dataset
from sadcl.data.loader import build_loader, measure_loader
from sadcl.data.transforms import build_eval_transform, build_transforms

__all__ = ["build_eval_loader", "loader_images_per_second"]


def build_eval_loader(
    cfg: Config,
    split: str,
    *,
    class_names: Sequence[str] | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    shard: bool = True,
    cache_images: bool = False,
) -> DataLoader:
    """The evaluation loader of one split: evaluation transform, no shuffling, ``loader.dataset`` the dataset.

    Args:
        cfg: The run's config (``data`` for the split, ``model`` for the transform's size and normalisation).
        split: The split to read.
        class_names: The model's class list: a split whose classes differ (another order included, which would score
            every class against the wrong column) is an error. None: the split's own.
        batch_size: Default: ``data.eval_batch_size``, else ``data.batch_size``.
        workers: Loader processes (default: ``data.workers``).
        shard: Each rank reads its share under ``torchrun`` (``engine.evaluate`` gathers them back into dataset
            order); False: every image in this process (single process, the same order either way).
        cache_images: Decode every image once and keep it in RAM (``data.cache_images``).

    Raises:
        ConfigError: The split is empty.
    """
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    dataset = build_dataset(
        cfg.data, split, build_eval_transform(cfg), class_names=class_names or None, cache_images=cache_images
    )
    if len(dataset) == 0:
        raise ConfigError(
            f"the {split!r} split of the {cfg.data.format} dataset is empty: an evaluation split needs "
            "images (or set data.val_split=null to train without validation)"
        )
    return build_loader(
        dataset,
        batch_size=batch_size or cfg.data.eval_batch_size or cfg.data.batch_size,
        sampler=D.build_eval_sampler(dataset) if shard else None,
        workers=cfg.data.workers if workers is None else workers,
    )


def loader_images_per_second(cfg: Config, *, split: str = "train", batches: int = 20, train: bool = True) -> float:
    """Loader throughput for a full ``Config`` as its run loads: dataset, transform (train preset or eval), batch
    size, workers, ``data.cache_images``."""
    train_tf, eval_tf = build_transforms(cfg.data, img_size=cfg.model.img_size, backbone=cfg.model.backbone)
    dataset = build_dataset(cfg.data, split, train_tf if train else eval_tf, cache_images=cfg.data.cache_images)
    loader = build_loader(
        dataset, batch_size=cfg.data.batch_size, shuffle=train, workers=cfg.data.workers, drop_last=train, seed=0
    )
    return measure_loader(loader, batches=batches)["images_per_s"]
