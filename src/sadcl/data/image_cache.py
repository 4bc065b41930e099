"""The decoded-image cache (``data.cache_images``): each image decoded and resized once per process, kept in RAM.

On a small dataset on CPU, the loader's per-image work (decode, resize) and its worker processes take a sizeable
share of every step from the compute threads (the MOM-30 demo: 17-20 % of a step at batch 16, BENCHMARKS.md). With
the cache an item costs only the random augmentation and the tensor conversion of an image that is already resized,
so ``data.workers=0`` is enough.

What is kept is the output of the transform's deterministic ``prepare`` step (``TrainPreset`` / ``EvalPreset``: the
leading resize) as uint8 ``[H, W, 3]`` arrays; an item then runs the transform's ``finish`` on it, so every batch is
bit-identical to the uncached one. Transforms without ``prepare`` get the decoded image. Entries are shared within the
process, keyed by the file list and ``prepare``: stage 1 and stage 2 decode the training split once (the prototype
pass reuses it only when it is held at the eval size: not after ``crop``'s larger resize), and ``run_training``
drops the entries it added when it ends (:func:`image_cache_scope`). Files are read when the cache is filled; a file
changed afterwards is not read again in that process. Loader workers share the entries only where they start by
``fork`` (Linux's default up to Python 3.13); under ``spawn`` / ``forkserver`` each worker gets its own copy, so keep
``data.workers=0`` with the cache there.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

from sadcl.data.images import DataError, load_image

__all__ = ["available_memory", "cached_images", "clear_image_cache", "image_cache_scope"]

_logger = logging.getLogger(__name__)

_STORE: dict[tuple[tuple[str, ...], str], list[np.ndarray]] = {}

MEMORY_FRACTION = 0.5
"""The cache may take at most this share of the memory available when it is filled."""


def available_memory() -> int | None:
    """Bytes of memory available now (Linux ``MemAvailable``, else physical pages), capped by this process's cgroup
    limit when it has one (a container's ``memory.max`` minus what it uses); None when unknown."""
    free: int | None = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if free is None:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    room = _cgroup_room()
    return free if room is None else min(free, room)


def _local_processes() -> int:
    """Processes of this machine that cache the same split (torchrun's ``LOCAL_WORLD_SIZE``; 1 when unset or odd)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def _cgroup_room(root: str = "/sys/fs/cgroup") -> int | None:
    """What this cgroup's memory limit leaves, or None without a limit: v2 ``memory.max - memory.current``, v1
    ``limit_in_bytes - usage_in_bytes``, the usage without the inactive page cache the kernel reclaims first (as
    docker and the kubelet count it). The cgroup mounted at ``root`` is read (a container's own)."""
    for limit, usage, stat, inactive in (
        ("memory.max", "memory.current", "memory.stat", "inactive_file"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", "memory/memory.stat", "total_inactive_file"),
    ):
        try:
            with open(os.path.join(root, limit)) as f:
                cap = f.read().strip()
            with open(os.path.join(root, usage)) as f:
                used = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if not (cap.isdigit() and int(cap) < 2**60):  # "max" (v2) or a huge number (v1) means no limit
            return None
        try:
            with open(os.path.join(root, stat)) as f:
                cache = next((int(line.split()[1]) for line in f if line.startswith(inactive + " ")), 0)
            used -= min(used, cache)
        except (OSError, ValueError, IndexError):
            pass
        return max(0, int(cap) - used)
    return None


@contextmanager
def image_cache_scope() -> Iterator[None]:
    """Entries added inside the block are dropped when it ends (a training run frees its images for the caller;
    entries that existed before stay)."""
    before = set(_STORE)
    try:
        yield
    finally:
        for key in [k for k in _STORE if k not in before]:
            del _STORE[key]


def clear_image_cache() -> None:
    """Drop every cached image of this process (frees the memory)."""
    _STORE.clear()


def cached_images(
    paths: Sequence[str],
    prepare: Callable | None,
    *,
    what: str = "dataset",
    threads: int | None = None,
    fill: bool = True,
) -> list[np.ndarray] | None:
    """Every image of ``paths`` decoded (:func:`sadcl.data.images.load_image`) and ``prepare``d, as uint8 arrays.

    Args:
        paths: N image files.
        prepare: A deterministic PIL -> PIL step (e.g. ``TrainPreset.prepare``), or None to keep the decoded images.
        what: Names the images in the log line and in errors (e.g. ``the 'train' split``).
        threads: Decoding threads (PIL releases the GIL); default ``min(8, cpu_count)``.
        fill: Decode what is not cached yet; False returns None instead (a one-pass reader that only reuses).

    Returns:
        N arrays ``[H, W, 3]`` uint8, in ``paths`` order (shared with every later call with the same arguments), or
        None when they are not cached and ``fill`` is False.

    Raises:
        DataError: An image cannot be read (naming the file), or the images would take more than half of the memory
            available (naming the estimate and ``data.cache_images``).
    """
    key = (tuple(str(p) for p in paths), "decoded" if prepare is None else repr(prepare))
    hit = _STORE.get(key)
    if hit is not None or not fill:
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
    copies = _local_processes()  # under torchrun every process of this machine fills its own copy at once
    if free is not None and estimate * copies > MEMORY_FRACTION * free:
        each = f" in each of the {copies} processes of this machine" if copies > 1 else ""
        raise DataError(
            f"data.cache_images: {what} ({len(paths)} images of about {first.nbytes / 1e6:.2f} MB once decoded) "
            f"needs about {estimate / 1e9:.1f} GB{each}, more than {MEMORY_FRACTION:.0%} of the {free / 1e9:.1f} GB "
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
