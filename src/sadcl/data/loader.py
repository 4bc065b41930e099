"""DataLoader construction with reproducible worker seeding, and the loader throughput measure."""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

_logger = logging.getLogger(__name__)


def seed_worker(worker_id: int) -> None:
    """Seed ``random`` and ``numpy`` in a loader worker from torch's per-worker seed (torch's own is already set).

    torch gives every worker ``base_seed + worker_id``, with ``base_seed`` drawn from the loader's generator, so
    this makes Python/numpy-based augmentations differ across workers and repeat across runs.
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def build_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool = False,
    workers: int = 0,
    drop_last: bool = False,
    sampler: Sampler | None = None,
    seed: int = 0,
    pin_memory: bool | None = None,
    persistent_workers: bool | None = None,
    prefetch_factor: int | None = None,
) -> DataLoader:
    """A DataLoader whose shuffling and worker augmentations are reproducible from ``seed``.

    Args:
        dataset: The dataset.
        batch_size: Images per batch.
        shuffle: Shuffle (ignored when a ``sampler`` is given: the sampler decides the order).
        workers: Loader processes.
        drop_last: Drop the last incomplete batch.
        sampler: E.g. a ``DistributedSampler``.
        seed: Seeds the loader's generator (shuffle order and worker base seeds).
        pin_memory: None = pin when CUDA is available.
        persistent_workers: None = ``workers > 0``.
        prefetch_factor: Batches prefetched per worker (None: torch's default).

    Returns:
        The DataLoader; batches are ``(images [B, 3, H, W], targets [B, C])``.
    """
    gen = torch.Generator()
    gen.manual_seed(seed)
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs["persistent_workers"] = workers > 0 if persistent_workers is None else persistent_workers
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=workers,
        drop_last=drop_last,
        generator=gen,
        worker_init_fn=seed_worker,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        **kwargs,
    )


def measure_loader(loader: DataLoader, *, batches: int = 20, warmup: int = 2) -> dict[str, float]:
    """Images/s a loader delivers (nothing else runs), after ``warmup`` batches that start the workers.

    Returns:
        ``{"images_per_s", "batches", "images", "seconds"}``.
    """
    it = iter(loader)
    for _ in range(warmup):
        if next(it, None) is None:
            break
    images, done = 0, 0
    start = time.perf_counter()
    for batch in it:
        images += len(batch[0])
        done += 1
        if done >= batches:
            break
    seconds = time.perf_counter() - start
    if done == 0:
        raise ValueError(f"the loader has no batches left after {warmup} warm-up batches; use a bigger dataset")
    return {"images_per_s": images / seconds, "batches": done, "images": images, "seconds": seconds}


class EpochIndexSampler(Sampler):
    """Wraps a sampler with an ``epoch`` attribute (e.g. ``DistributedSampler``) to yield ``(epoch, index)`` keys.

    The key travels to the loader workers with each index, so a :class:`SeededDataset` can seed its augmentation from
    it even in persistent workers (which never see ``set_epoch`` calls made in the main process).
    """

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        epoch = int(getattr(self.sampler, "epoch", 0))
        return ((epoch, int(i)) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class SeededDataset(Dataset):
    """A dataset whose random augmentation of sample ``i`` in epoch ``e`` depends only on ``(seed, e, i)``.

    Each item is produced under its own seed for ``torch``, ``random`` and ``numpy``, and the caller's generator
    states are restored afterwards. So augmentations do not depend on the number of workers, on the rank a sample
    lands on under DDP, or on which batches were skipped when resuming mid-epoch, and they never consume the main
    process's RNG (which then only drives dropout): the conditions for exact resume and DDP/single-process equality.

    Args:
        dataset: Any map-style dataset; its attributes (``targets``, ``class_names``, ...) stay reachable.
        seed: Base seed.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not set yet (unpickling): avoid infinite recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        item_seed = (self.seed * 1_000_003 + epoch * 100_000_007 + index) % (2**63 - 1)
        # Only torch's CPU generator: the transforms run on CPU, and torch.manual_seed would also reseed the CUDA
        # generators (dropout's stream with data.workers=0 on a GPU) and cost 100x more (0.2 ms an item).
        cpu = torch.random.default_generator
        torch_state, py_state, np_state = cpu.get_state(), random.getstate(), np.random.get_state()
        cpu.manual_seed(item_seed)
        random.seed(item_seed)
        np.random.seed(item_seed % 2**32)
        try:
            return self.dataset[index]
        finally:
            cpu.set_state(torch_state)
            random.setstate(py_state)
            np.random.set_state(np_state)
