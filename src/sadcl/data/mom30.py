"""MOM-30: the built-in multi-label benchmark, generated deterministically from real glyphs (BENCHMARK-MOM30.md).

Every image is rendered from its own ``numpy`` Generator seeded with ``(seed, split, index)``, so the result does
not depend on chunking, worker count or resumption: same parameters, same bytes. Layout written by
:func:`generate_mom30`::

    out_dir/classes.txt                    the 30 class names, one per line
    out_dir/images/<split>/<index>.png     RGB images, size x size
    out_dir/<split>.csv                    image,labels (space-separated names): the generic manifest reader reads it
    out_dir/<split>.jsonl                  image, labels, boxes [x0, y0, x1, y1, name], scene, source instance ids
    out_dir/meta.json                      parameters, source hashes, counts, label statistics (written last)

Splits: ``train`` and ``val`` use only source-train glyphs, disjoint per instance (val gets a fixed 10 % of every
class's source-train pool); ``test`` uses only source-test glyphs and the other background photo.
"""

from __future__ import annotations

import colorsys
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sadcl import sources
from sadcl.data.base import MultiLabelDataset, reader_options
from sadcl.data.images import DataError
from sadcl.data.manifest import read_manifest
from sadcl.data.mom30_sources import CLASSES, SourcePools, load_background_photos, load_source_pools
from sadcl.io import atomic_path, atomic_write_text

if TYPE_CHECKING:
    from sadcl.config import DataConfig

_logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
SPLITS = ("train", "val", "test")
_SPLIT_CODE = {"train": 1, "val": 2, "test": 3}
VAL_FRACTION = 0.1
CHUNK = 250  # images per resumable unit

# scene -> (prior, {class: weight}); 4 % of every draw is spread uniformly over all 30 classes (out of context).
SCENES: dict[str, tuple[float, dict[str, float]]] = {
    "farm": (0.14, {"cow": 3, "sheep": 3, "horse": 2.5, "dog": 1.5, "ankle_boot": 1, "bird": 0.5}),
    "savanna": (0.10, {"elephant": 3, "giraffe": 3, "zebra": 3, "bird": 1}),
    "forest": (0.08, {"bear": 3, "bird": 3, "dog": 1, "ankle_boot": 1, "coat": 1}),
    "home": (0.16, {"cat": 3, "dog": 2.5, "bag": 1, "sneaker": 1, "tshirt": 1, "digit_1": 0.5, "digit_2": 0.5}),
    "wardrobe": (0.14, {n: 2 for n in ("tshirt", "trouser", "pullover", "dress", "coat", "shirt")}),
    "shoe_shop": (
        0.10,
        {"sandal": 3, "sneaker": 3, "ankle_boot": 3, "bag": 2, "digit_0": 1, "digit_9": 1, "digit_5": 1},
    ),
    "street": (
        0.14,
        {
            "digit_1": 2,
            "digit_2": 2,
            "digit_3": 1.5,
            "digit_4": 1,
            "digit_7": 1,
            "dog": 1.5,
            "bird": 1,
            "coat": 1,
            "bag": 1,
        },
    ),
    "office": (0.14, dict(zip([f"digit_{i}" for i in range(10)], [2, 2, 1.5, 1.5, 1, 1, 1, 1, 0.8, 0.8]))),
}
OUT_OF_CONTEXT = 0.04
NUM_OBJECTS_P = (0.15, 0.35, 0.30, 0.20)  # 1..4 objects, mean 2.55
PHOTO_P = 0.6
INK_THRESHOLD = 20
MAX_IOU = 0.2
PLACEMENT_TRIES = 30

_SCENE_NAMES = list(SCENES)
_SCENE_PRIOR = np.array([SCENES[s][0] for s in _SCENE_NAMES])
_SCENE_CLASS_P = np.zeros((len(SCENES), len(CLASSES)))
for _k, _s in enumerate(_SCENE_NAMES):
    for _name, _w in SCENES[_s][1].items():
        _SCENE_CLASS_P[_k, CLASSES.index(_name)] = _w
    _SCENE_CLASS_P[_k] = (1 - OUT_OF_CONTEXT) * _SCENE_CLASS_P[_k] / _SCENE_CLASS_P[_k].sum() + OUT_OF_CONTEXT / len(
        CLASSES
    )


VARIANT_DEFAULTS: dict[str, Any] = {
    "objects_p": list(NUM_OBJECTS_P),
    "object_size": [18.0, 32.0],
    "photo_p": PHOTO_P,
    "swap_photos": False,
}
"""The generator's variant options and their default values (the shipped MOM-30):

- ``objects_p``: probabilities of 1, 2, ... objects per image (any length; normalised);
- ``object_size``: ``[min, max]`` long side of an object in pixels at size 64 (scaled with the size);
- ``photo_p``: probability of a photo background (else a noisy flat colour);
- ``swap_photos``: train/val use the test background photo and test the train one.

Only the options that differ from these defaults enter the parameter dict (so the default dataset keeps its cache
directory and ``meta.json``)."""


def _variant(options: dict[str, Any]) -> dict[str, Any]:
    """Validated variant options that differ from ``VARIANT_DEFAULTS``."""
    unknown = sorted(set(options) - set(VARIANT_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown MOM-30 variant option(s) {unknown}; valid: {sorted(VARIANT_DEFAULTS)}")
    out: dict[str, Any] = {}
    if options.get("objects_p") is not None:
        p = [float(x) for x in options["objects_p"]]
        if not p or min(p) < 0 or sum(p) <= 0 or len(p) > len(CLASSES):
            raise ValueError(
                f"MOM-30 objects_p must be 1-{len(CLASSES)} non-negative weights of 1, 2, ... objects "
                f"with a positive sum, got {options['objects_p']}"
            )
        total = sum(p)
        out["objects_p"] = [round(x / total, 12) for x in p]
    if options.get("object_size") is not None:
        lo, hi = (float(x) for x in options["object_size"])
        if not 4 <= lo <= hi <= 64:
            raise ValueError(
                f"MOM-30 object_size must be [min, max] with 4 <= min <= max <= 64, got {options['object_size']}"
            )
        out["object_size"] = [lo, hi]
    if options.get("photo_p") is not None:
        if not 0.0 <= float(options["photo_p"]) <= 1.0:
            raise ValueError(f"MOM-30 photo_p must be in [0, 1], got {options['photo_p']}")
        out["photo_p"] = float(options["photo_p"])
    if options.get("swap_photos") is not None:
        if not isinstance(options["swap_photos"], bool):
            raise ValueError(f"MOM-30 swap_photos must be true or false, got {options['swap_photos']!r}")
        out["swap_photos"] = options["swap_photos"]
    return {k: v for k, v in out.items() if v != VARIANT_DEFAULTS[k]}


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
        **_variant(variant),
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


# ----------------------------------------------------------------------------------------------------- rendering
class Renderer:
    """Renders MOM-30 images from the source pools; one instance per process."""

    def __init__(
        self,
        *,
        size: int,
        seed: int,
        pools: SourcePools | None = None,
        photos: dict[str, np.ndarray] | None = None,
        **variant: Any,
    ) -> None:
        self.size = size
        self.seed = seed
        self.variant = {**VARIANT_DEFAULTS, **_variant(variant)}
        p = np.asarray(self.variant["objects_p"], np.float64)
        self.objects_p = p / p.sum()
        pools = pools or load_source_pools()
        photos = photos or load_background_photos()
        self.photos = {k: Image.fromarray(v) for k, v in photos.items()}
        # Source-train pools are split once per seed into disjoint train / val instance sets.
        rng = np.random.default_rng([seed, 0])
        self.pool: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": list(pools.images["test"])}
        self.pool_ids: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": list(pools.ids["test"])}
        for x, ids in zip(pools.images["train"], pools.ids["train"]):
            perm = rng.permutation(len(x))
            n_val = max(1, int(round(VAL_FRACTION * len(x))))
            for split, sel in (("val", np.sort(perm[:n_val])), ("train", np.sort(perm[n_val:]))):
                self.pool[split].append(x[sel])
                self.pool_ids[split].append(ids[sel])

    def _background(self, rng: np.random.Generator, split: str) -> np.ndarray:
        s = self.size
        if rng.random() < self.variant["photo_p"]:
            photo = self.photos[
                ("test" if split == "test" else "train")
                if not self.variant["swap_photos"]
                else ("train" if split == "test" else "test")
            ]
            hi = min(photo.size) // 2
            side = int(rng.integers(min(s, hi), hi + 1))
            x0 = int(rng.integers(0, photo.size[0] - side + 1))
            y0 = int(rng.integers(0, photo.size[1] - side + 1))
            crop = photo.resize((s, s), Image.BILINEAR, box=(x0, y0, x0 + side, y0 + side))
            return np.asarray(crop, np.float32) * rng.uniform(0.25, 0.5)
        colour = rng.integers(0, 91, size=3).astype(np.float32)
        return colour + rng.normal(0.0, 12.0, size=(s, s, 3)).astype(np.float32)

    def render(self, split: str, index: int) -> tuple[np.ndarray, dict[str, Any]]:
        """Image ``index`` of ``split``: uint8 ``[size, size, 3]`` and its record (labels, boxes, scene, instances)."""
        rng = np.random.default_rng([self.seed, _SPLIT_CODE[split], index])
        s = self.size
        img = self._background(rng, split)
        scene = int(rng.choice(len(_SCENE_NAMES), p=_SCENE_PRIOR))
        k = int(rng.choice(len(self.objects_p), p=self.objects_p)) + 1
        classes = rng.choice(len(CLASSES), size=k, replace=False, p=_SCENE_CLASS_P[scene])
        boxes: list[tuple[int, int, int, int]] = []
        records = []
        instances = []
        for c in classes.tolist():
            pool = self.pool[split][c]
            j = int(rng.integers(len(pool)))
            glyph = pool[j]
            instances.append(str(self.pool_ids[split][c][j]))
            ys, xs = np.nonzero(glyph > INK_THRESHOLD)
            if len(ys):  # crop to the ink
                glyph = glyph[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
            long_side = rng.uniform(*self.variant["object_size"]) * s / 64
            scale = long_side / max(glyph.shape)
            w = max(1, min(s, int(round(glyph.shape[1] * scale))))
            h = max(1, min(s, int(round(glyph.shape[0] * scale))))
            patch = np.asarray(Image.fromarray(glyph).resize((w, h), Image.BILINEAR), np.float32) / 255.0
            box = self._place(rng, w, h, boxes)
            boxes.append(box)
            rgb = (
                np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.7, 1.0), rng.uniform(0.8, 1.0)), np.float32)
                * 255.0
            )
            alpha = np.clip(6.0 * patch, 0.0, 1.0)[..., None]  # [h, w, 1]
            x0, y0, x1, y1 = box
            img[y0:y1, x0:x1] = (1.0 - alpha) * img[y0:y1, x0:x1] + alpha * rgb
            records.append([x0, y0, x1, y1, CLASSES[c]])
        out = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        labels = sorted(CLASSES[c] for c in classes.tolist())
        return out, {"labels": labels, "boxes": records, "scene": _SCENE_NAMES[scene], "instances": instances}

    def _place(
        self, rng: np.random.Generator, w: int, h: int, boxes: list[tuple[int, int, int, int]]
    ) -> tuple[int, int, int, int]:
        """First of 30 random positions with IoU <= 0.2 against earlier boxes; else the least overlapping one."""
        best, best_iou = None, math.inf
        for _ in range(PLACEMENT_TRIES):
            x0 = int(rng.integers(0, self.size - w + 1))
            y0 = int(rng.integers(0, self.size - h + 1))
            box = (x0, y0, x0 + w, y0 + h)
            iou = max((_iou(box, b) for b in boxes), default=0.0)
            if iou <= MAX_IOU:
                return box
            if iou < best_iou:
                best, best_iou = box, iou
        return best  # type: ignore[return-value]


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# ---------------------------------------------------------------------------------------------------- generation
_WORKER: Renderer | None = None


def _worker_init(size: int, seed: int, variant: dict[str, Any] | None = None) -> None:
    global _WORKER
    full = {**VARIANT_DEFAULTS, **(variant or {})}
    if _WORKER is None or _WORKER.size != size or _WORKER.seed != seed or _WORKER.variant != full:
        _WORKER = Renderer(size=size, seed=seed, **(variant or {}))


def _render_chunk(out_dir: str, split: str, start: int, stop: int) -> list[dict[str, Any]]:
    """Render images [start, stop) of a split to PNG; return their records (written by the caller)."""
    assert _WORKER is not None
    records = []
    for i in range(start, stop):
        arr, rec = _WORKER.render(split, i)
        rel = f"images/{split}/{i:06d}.png"
        with atomic_path(Path(out_dir) / rel) as tmp:  # a crash never leaves a half-written PNG under the final name
            Image.fromarray(arr).save(tmp, format="PNG")
        records.append({"image": rel, **rec})
    return records


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
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    jobs = []
    for split in SPLITS:
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        for start in range(0, sizes[split], CHUNK):
            part = parts / f"{split}-{start:07d}.jsonl"
            if not part.is_file():
                jobs.append((split, start, min(start + CHUNK, sizes[split]), part))
    total = sum(sizes.values())
    todo = sum(stop - start for _, start, stop, _ in jobs)
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=total - todo, unit="img", desc="MOM-30", disable=not progress)

    def _done(job: tuple, records: list[dict[str, Any]]) -> None:
        atomic_write_text(job[3], "".join(json.dumps(r) + "\n" for r in records))
        bar.update(len(records))

    if jobs:
        _worker_init(size, seed, variant)  # with the fork start method the workers inherit the loaded pools
    if jobs and workers > 1:
        with ProcessPoolExecutor(workers, initializer=_worker_init, initargs=(size, seed, variant)) as pool:
            futures = [(job, pool.submit(_render_chunk, str(out), *job[:3])) for job in jobs]
            for job, fut in futures:
                _done(job, fut.result())
    else:
        for job in jobs:
            _done(job, _render_chunk(str(out), *job[:3]))
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


# ------------------------------------------------------------------------------------------------------- reader
_PARAM_OPTIONS = ("size", "n_train", "n_val", "n_test", "seed")
_PARTIAL_OPTIONS = ("known_fraction", "known_seed")
"""Read-time partial labels (training split only; not dataset parameters, so the cache is shared)."""
_OPTIONS = (*_PARAM_OPTIONS, *VARIANT_DEFAULTS, "workers", "progress", *_PARTIAL_OPTIONS)


def _params_from_options(options: dict[str, Any]) -> dict[str, Any]:
    o = reader_options(options, _OPTIONS, "mom30")
    try:
        return default_params(
            **{k: int(o[k]) for k in _PARAM_OPTIONS if k in o}, **{k: o[k] for k in VARIANT_DEFAULTS if k in o}
        )
    except ValueError as e:
        raise DataError(f"data.options: {e}") from None


def _cache_root() -> Path:
    return sources.cache_dir() / "mom30"


def dataset_dir(cfg: DataConfig) -> Path:
    """Where the MOM-30 dataset of a ``DataConfig`` lives: ``root``, or the user cache keyed by the parameters."""
    if cfg.root is not None:
        return Path(cfg.root)
    return _cache_root() / params_dirname(_params_from_options(cfg.options))


def is_generated(cfg: DataConfig) -> bool:
    """Whether the dataset a ``DataConfig`` points at is already complete (no generation needed)."""
    meta = read_meta(dataset_dir(cfg))
    return meta is not None and (cfg.root is not None or meta.get("params") == _params_from_options(cfg.options))


def read_mom30(
    root: str | os.PathLike, split: str, *, transform: Callable | None = None, skip_bad: bool = False
) -> MultiLabelDataset:
    """Read a generated MOM-30 split (``dataset.info`` holds boxes, scene and source instances per image)."""
    if split not in SPLITS:
        raise DataError(f"MOM-30 split {split!r}; expected one of {list(SPLITS)}")
    root = Path(root)
    if read_meta(root) is None:
        raise DataError(f"{root}: no complete MOM-30 dataset (meta.json missing); run `sadcl data mom30 --out {root}`")
    return read_manifest(
        root / f"{split}.jsonl", class_names=str(root / "classes.txt"), skip_bad=skip_bad, transform=transform
    )


def build(cfg: DataConfig, split: str, transform: Callable | None = None) -> MultiLabelDataset:
    """``DataConfig`` -> MOM-30 split, generating it on first use.

    Options: ``size``, ``n_train``, ``n_val``, ``n_test``, ``seed`` (the dataset), ``workers``, ``progress``
    (generation only). With ``root=None`` the data lives in ``cache_dir()/mom30/<params>``.
    ``known_fraction`` (with ``known_seed``, default 0) keeps only that share of the training split's labels known
    (:func:`sadcl.data.partial_labels.hide_labels`); validation and test stay fully labelled.
    """
    o = reader_options(cfg.options, _OPTIONS, "mom30")
    params = _params_from_options(o)
    root = dataset_dir(cfg)
    meta = read_meta(root)
    if meta is None:
        _logger.info("generating MOM-30 into %s (first use)", root)
        generate_mom30(
            root,
            **{k: params[k] for k in params if k != "version"},
            progress=bool(o.get("progress", True)),
            workers=int(o.get("workers", 1)),
        )
    elif any(k in o for k in (*_PARAM_OPTIONS, *VARIANT_DEFAULTS)) and meta.get("params") != params:
        raise DataError(f"{root}: holds MOM-30 with {meta.get('params')}, but data.options ask for {params}")
    ds = read_mom30(root, split, transform=transform, skip_bad=cfg.skip_bad)
    if o.get("known_fraction") is not None and split == cfg.train_split:
        if getattr(cfg, "val_holdout", None):
            raise DataError("data.options.known_fraction with data.val_holdout would hide validation labels")
        from sadcl.data.partial_labels import apply_known_fraction

        ds = apply_known_fraction(ds, known_fraction=float(o["known_fraction"]), seed=int(o.get("known_seed", 0)))
    return ds


# ------------------------------------------------------------------------------------------------------ preview
def save_preview(
    dataset_dir: str | os.PathLike, out_png: str | os.PathLike, *, n: int = 16, split: str = "train", tile: int = 128
) -> Path:
    """Save a grid of the first ``n`` images of a split with their label names underneath.

    Args:
        dataset_dir: A generated MOM-30 directory (or any directory with ``<split>.jsonl`` in this layout).
        out_png: Output PNG path.
        n: Number of images.
        split: Split to show.
        tile: Displayed image side in pixels (nearest-neighbour upscaling keeps the glyphs crisp).

    Returns:
        The PNG path.
    """
    root = Path(dataset_dir)
    records = []
    with open(root / f"{split}.jsonl", encoding="utf-8") as f:
        for line in f:
            records.append(json.loads(line))
            if len(records) >= n:
                break
    if not records:
        raise DataError(f"{root / f'{split}.jsonl'}: no images to preview")
    cols = math.ceil(math.sqrt(len(records)))
    rows = math.ceil(len(records) / cols)
    try:
        font = ImageFont.load_default(size=max(10, tile // 11))
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        font = ImageFont.load_default()
    line_h = max(12, tile // 10)
    text_h = 4 * line_h + 4
    pad = 4
    grid = Image.new("RGB", (cols * (tile + pad) + pad, rows * (tile + text_h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    max_chars = max(8, int(tile / (line_h * 0.55)))
    for k, rec in enumerate(records):
        x = pad + (k % cols) * (tile + pad)
        y = pad + (k // cols) * (tile + text_h + pad)
        with Image.open(root / rec["image"]) as im:
            grid.paste(im.convert("RGB").resize((tile, tile), Image.NEAREST), (x, y))
        lines, cur = [], ""
        for name in rec["labels"]:  # wrap label names to the tile width
            cand = f"{cur}, {name}" if cur else name
            if len(cand) > max_chars and cur:
                lines.append(cur + ",")
                cur = name
            else:
                cur = cand
        lines.append(cur)
        for j, text in enumerate(lines[:4]):
            draw.text((x, y + tile + 2 + j * line_h), text, fill=(0, 0, 0), font=font)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return out


def mom30_box_samples(
    cfg: DataConfig, split: str, transform: Callable, *, limit: int | None = None
) -> tuple[Iterator[tuple[Any, Any, list[tuple[int, tuple[float, float, float, float]]]]], tuple[float, float]]:
    """MOM-30 samples with their boxes, for :func:`sadcl.attention.attention_box_score`.

    Args:
        cfg: The run's data config (``format`` must be ``mom30``).
        split: Dataset split.
        transform: Evaluation transform.
        limit: At most this many images.

    Returns:
        ``(samples, box_scale)``: an iterator of ``(image [3, H, W], target [C], [(class, (x0, y0, x1, y1)), ...])``
        and the canvas -> input scale factors.
    """
    import torch

    from sadcl.data import build_dataset

    if cfg.format != "mom30":
        raise ValueError(f"attention-in-box needs MOM-30 boxes; this run uses data.format={cfg.format!r}")
    dataset = build_dataset(cfg, split, transform)
    index = {name: i for i, name in enumerate(dataset.class_names)}
    n = len(dataset) if limit is None else min(limit, len(dataset))
    with Image.open(dataset.paths[0]) as im:
        canvas_w, canvas_h = im.size
    x0 = dataset[0][0]
    scale = (x0.shape[-1] / canvas_w, x0.shape[-2] / canvas_h)

    def samples() -> Iterator[tuple[Any, Any, list[tuple[int, tuple[float, float, float, float]]]]]:
        for i in range(n):
            image, target = dataset[i][:2]
            boxes = [
                (index[b[4]], (float(b[0]), float(b[1]), float(b[2]), float(b[3])))
                for b in dataset.info[i].get("boxes", [])
                if b[4] in index
            ]
            yield image, torch.as_tensor(target), boxes

    return samples(), scale
