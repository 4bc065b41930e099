"""MOM-30 generation: the parameter set that identifies a dataset, and the resumable, idempotent writer of
``out_dir`` (layout in :mod:`sadcl.data.mom30`); scenes are drawn by :mod:`sadcl.data.mom30_render`.

Processes that generate the same directory at once take turns on a lock file beside it: the second finds the first's
complete dataset and returns it (before, it read the first's half-written chunk files and failed).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from sadcl.data.mom30_render import (
    CHUNK,
    GENERATOR_VERSION,
    SPLITS,
    VARIANT_DEFAULTS,
    render_chunk,
    variant_options,
    worker_init,
)
from sadcl.data.mom30_sources import CLASSES
from sadcl.io import atomic_write_text, file_lock

__all__ = ["default_params", "generate_mom30", "params_dirname", "read_meta"]

_logger = logging.getLogger(__name__)


def default_params(
    *, size: int = 64, n_train: int = 20000, n_val: int = 2000, n_test: int = 5000, seed: int = 0, **variant: Any
) -> dict[str, Any]:
    """The parameter dict that identifies a generated dataset (stored in ``meta.json``).

    ``variant``: any of ``VARIANT_DEFAULTS``; only values that differ from the defaults are kept.
    """
    return {
        "size": int(size),
        "n_train": int(n_train),
        "n_val": int(n_val),
        "n_test": int(n_test),
        "seed": int(seed),
        "version": GENERATOR_VERSION,
        **variant_options(variant),
    }


def params_dirname(params: dict[str, Any]) -> str:
    """Cache directory name of a parameter set, e.g. ``s64-tr20000-va2000-te5000-seed0-v1``; a variant adds a hash
    of its options (``...-v1-x1a2b3c4d``)."""
    name = (
        f"s{params['size']}-tr{params['n_train']}-va{params['n_val']}-te{params['n_test']}-seed{params['seed']}"
        f"-v{params['version']}"
    )
    extra = {k: params[k] for k in VARIANT_DEFAULTS if k in params}
    if extra:
        import hashlib

        name += "-x" + hashlib.sha256(json.dumps(extra, sort_keys=True).encode()).hexdigest()[:8]
    return name


def read_meta(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``meta.json`` of a generated dataset, or None when absent (i.e. generation never completed)."""
    path = Path(out_dir) / "meta.json"
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def generate_mom30(
    out_dir: str | os.PathLike,
    *,
    size: int = 64,
    n_train: int = 20000,
    n_val: int = 2000,
    n_test: int = 5000,
    seed: int = 0,
    progress: bool = True,
    workers: int = 1,
    **variant: Any,
) -> Path:
    """Generate MOM-30 into ``out_dir`` (resumable and idempotent).

    A complete dataset with the same parameters is left untouched. An interrupted run resumes from its last
    finished chunk of 250 images. A directory holding a different parameter set is an error, never overwritten.

    Args:
        out_dir: Output directory.
        size: Image side in pixels (object sizes scale with it; 64 is the measured reference).
        n_train: Training images.
        n_val: Validation images.
        n_test: Test images.
        seed: Generation seed: same seed and parameters give identical files.
        progress: Show a tqdm progress bar.
        workers: Rendering processes (1 = in-process). Output does not depend on it.
        **variant: Generator variant options (``objects_p``, ``object_size``, ``photo_p``, ``swap_photos``; see
            ``VARIANT_DEFAULTS``). Part of the parameters: recorded in ``meta.json`` and in the cache key.

    Returns:
        ``out_dir`` as a Path.
    """
    if size < 32:
        raise ValueError(f"MOM-30 size must be >= 32 (objects are 18-32 px at 64), got {size}")
    if min(n_train, n_val, n_test) < 0:
        raise ValueError("MOM-30 split sizes must be >= 0")
    out = Path(out_dir)
    params = default_params(size=size, n_train=n_train, n_val=n_val, n_test=n_test, seed=seed, **variant)
    out.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(out.parent / f".{out.name}.lock"):  # beside it: the directory must hold only the dataset
        return _generate(out, params, progress=progress, workers=workers)


def _generate(out: Path, params: dict[str, Any], *, progress: bool, workers: int) -> Path:
    """:func:`generate_mom30` under its lock."""
    size, seed = params["size"], params["seed"]
    sizes = {"train": params["n_train"], "val": params["n_val"], "test": params["n_test"]}
    variant = {k: params[k] for k in VARIANT_DEFAULTS if k in params}
    meta = read_meta(out)
    if meta is not None:
        if meta.get("params") == params:
            _logger.info("MOM-30 already complete in %s", out)
            return out
        raise ValueError(
            f"{out} holds a MOM-30 dataset with other parameters ({meta.get('params')}); "
            f"choose another directory or delete it"
        )
    started = out / ".params.json"
    if out.is_dir() and not started.is_file():
        # Not a (partial) MOM-30 generation: never write into a directory holding someone else's files.
        others = sorted(p.name for p in out.iterdir())
        if others:
            raise ValueError(
                f"{out} is not empty and holds no MOM-30 generation ({', '.join(others[:5])}"
                f"{', ...' if len(others) > 5 else ''}): choose an empty or new directory"
            )
    out.mkdir(parents=True, exist_ok=True)
    if started.is_file() and json.loads(started.read_text()) != params:
        raise ValueError(
            f"{out} holds a partial MOM-30 generation with other parameters "
            f"({started.read_text().strip()}); choose another directory or delete it"
        )
    atomic_write_text(started, json.dumps(params))
    atomic_write_text(out / "classes.txt", "\n".join(CLASSES) + "\n")
    parts = out / "parts"
    parts.mkdir(exist_ok=True)
    jobs = []
    for split in SPLITS:
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        for start in range(0, sizes[split], CHUNK):
            part = parts / f"{split}-{start:07d}.jsonl"
            if not part.is_file():
                jobs.append((split, start, min(start + CHUNK, sizes[split]), part))
    total = sum(sizes.values())
    todo = sum(stop - start for _, start, stop, _ in jobs)
    from sadcl.progress import LineProgress, progress_bar

    # A bar on a terminal, a few log lines in a log file; nothing when progress is off.
    bar = (
        progress_bar(total=total, initial=total - todo, unit="img", desc="MOM-30", leave=True)
        if progress
        else LineProgress(total=None, desc="MOM-30")
    )

    def _done(job: tuple, records: list[dict[str, Any]]) -> None:
        atomic_write_text(job[3], "".join(json.dumps(r) + "\n" for r in records))
        bar.update(len(records))

    if jobs:
        worker_init(size, seed, variant)  # with the fork start method the workers inherit the loaded pools
    if jobs and workers > 1:
        with ProcessPoolExecutor(workers, initializer=worker_init, initargs=(size, seed, variant)) as pool:
            futures = [(job, pool.submit(render_chunk, str(out), *job[:3])) for job in jobs]
            for job, fut in futures:
                _done(job, fut.result())
    else:
        for job in jobs:
            _done(job, render_chunk(str(out), *job[:3]))
    bar.close()

    stats = {}
    for split in SPLITS:
        records = []
        for start in range(0, sizes[split], CHUNK):
            with open(parts / f"{split}-{start:07d}.jsonl", encoding="utf-8") as f:
                records.extend(json.loads(line) for line in f)
        atomic_write_text(out / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in records))
        atomic_write_text(
            out / f"{split}.csv", "image,labels\n" + "".join(f"{r['image']},{' '.join(r['labels'])}\n" for r in records)
        )
        counts = np.zeros(len(CLASSES), np.int64)
        for r in records:
            for lab in r["labels"]:
                counts[CLASSES.index(lab)] += 1
        stats[split] = {
            "images": len(records),
            "labels_per_image": float(counts.sum() / max(1, len(records))),
            "class_counts": dict(zip(CLASSES, counts.tolist())),
        }
    from sadcl import __version__
    from sadcl.data.mom30_sources import SHA256

    meta = {
        "format": "mom30",
        "params": params,
        "classes": CLASSES,
        "sources": SHA256,
        "stats": stats,
        "generator": f"sadcl {__version__}",
    }
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=1) + "\n")  # last: marks the dataset complete
    shutil.rmtree(parts, ignore_errors=True)
    started.unlink(missing_ok=True)
    _logger.info("MOM-30 written to %s (%d images)", out, total)
    return out
