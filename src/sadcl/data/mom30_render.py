"""MOM-30 rendering: scenes and their class priors, the variant options, and the per-image ``Renderer``.

Every image is drawn from its own ``numpy`` Generator seeded with ``(seed, split, index)`` (see
:mod:`sadcl.data.mom30` for the layout and the cache), so chunking, worker count and resumption never change a byte.
"""

from __future__ import annotations

import colorsys
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sadcl.data.mom30_sources import CLASSES, SourcePools, load_background_photos, load_source_pools
from sadcl.io import atomic_path

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


def variant_options(options: dict[str, Any]) -> dict[str, Any]:
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
        self.variant = {**VARIANT_DEFAULTS, **variant_options(variant)}
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


def worker_init(size: int, seed: int, variant: dict[str, Any] | None = None) -> None:
    global _WORKER
    full = {**VARIANT_DEFAULTS, **(variant or {})}
    if _WORKER is None or _WORKER.size != size or _WORKER.seed != seed or _WORKER.variant != full:
        _WORKER = Renderer(size=size, seed=seed, **(variant or {}))


def render_chunk(out_dir: str, split: str, start: int, stop: int) -> list[dict[str, Any]]:
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
