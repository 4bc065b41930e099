"""The decoded-image cache (``data.cache_images``): each image decoded and resized once per process, kept in RAM.

On a small dataset on CPU, the loader's per-image work (decode, resize) and its worker processes take a sizeable
share of every step from the compute threads (the MOM-30 demo: 17-20 % of a step at batch 16, BENCHMARKS.md). With
the cache an item costs only the random augmentation and the tensor conversion of an image that is already resized,
so ``data.workers=0`` is enough.

What is kept is the output of the transform's deterministic ``prepare`` step (``TrainPreset`` / ``EvalPreset``: the
leading resize) as uint8 ``[H, W, 3]`` arrays; an item then runs the transform's ``finish`` on it, so every batch is
bit-identical to the uncached one. Transforms without ``prepare`` get the decoded image. Entries are shared within the
process, keyed by the file list and ``prepare``: stage 1, the prototype pass and stage 2 decode the training split
once. Files are read when the cache is filled; a file changed afterwards is not read again in that process.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from sadcl.data.images import DataError, load_image

__all__ = ["cached_images", "clear_image_cache", "available_memory"]

_logger = logging.getLogger(__name__)

_STORE: dict[tuple[tuple[str, ...], str], list[np.ndarray]] = {}

MEMORY_FRACTION = 0.5
"""The cache may take at most this share of the memory available when it is filled."""


def available_memory() -> int | None:
    """Bytes of memory available now (Linux ``MemAvailable``; else physical pages), or None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def clear_image_cache() -> None:
    """Drop every cached image of this process (frees the memory)."""
    _STORE.clear()


def cached_images(
    paths: Sequence[str], prepare: Callable | None, *, what: str = "dataset", threads: int | None = None
) -> list[np.ndarray]:
    """Every image of ``paths`` decoded (:func:`sadcl.data.images.load_image`) and ``prepare``d, as uint8 arrays.

    Args:
        paths: N image files.
        prepare: A deterministic PIL -> PIL step (e.g. ``TrainPreset.prepare``), or None to keep the decoded images.
        what: Names the images in the log line and in errors (e.g. ``the 'train' split``).
        threads: Decoding threads (PIL releases the GIL); default ``min(8, cpu_count)``.

    Returns:
        N arrays ``[H, W, 3]`` uint8, in ``paths`` order (shared with every later call with the same arguments).

    Raises:
        DataError: An image cannot be read (naming the file), or the images would take more than half of the memory
            available (naming the estimate and ``data.cache_images``).
    """
    key = (tuple(str(p) for p in paths), "decoded" if prepare is None else repr(prepare))
    hit = _STORE.get(key)
    if hit is not None:
        return hit
    if not paths:
        return []

    def one(path: str) -> np.ndarray:
        image = load_image(path)
        return np.asarray(image if prepare is None else prepare(image), dtype=np.uint8)

    start = time.perf_counter()
    first = one(key[0][0])
    estimate = first.nbytes * len(paths)
    free = available_memory()
    if free is not None and estimate > MEMORY_FRACTION * free:
        raise DataError(
            f"data.cache_images: {what} ({len(paths)} images of about {first.nbytes / 1e6:.2f} MB once decoded) "
            f"needs about {estimate / 1e9:.1f} GB, more than {MEMORY_FRACTION:.0%} of the {free / 1e9:.1f} GB "
            "available; set data.cache_images=false"
        )
    with ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool:
        arrays = [first, *pool.map(one, key[0][1:])]
    total = sum(a.nbytes for a in arrays)
    _logger.info(
        "data.cache_images: %s, %d images in RAM (%.0f MB) in %.1f s",
        what,
        len(arrays),
        total / 1e6,
        time.perf_counter() - start,
    )
    _STORE[key] = arrays
    return arrays
