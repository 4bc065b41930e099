"""MOM-30: the built-in multi-label benchmark, generated deterministically from real glyphs (BENCHMARK-MOM30.md).

Here: the cache (one directory per parameter set), the reader and ``build`` (generating on first use), the preview
sheet and the attention-in-box samples. Generation (:func:`generate_mom30`, re-exported here) is
:mod:`sadcl.data.mom30_generate`: every image is rendered from its own ``numpy`` Generator seeded with
``(seed, split, index)``, so the result does not depend on chunking, worker count or resumption: same parameters,
same bytes. Layout written::

    out_dir/classes.txt                    the 30 class names, one per line
    out_dir/images/<split>/<index>.png     RGB images, size x size
    out_dir/<split>.csv                    image,labels (space-separated names): the generic manifest reader reads it
    out_dir/<split>.jsonl                  image, labels, boxes [x0, y0, x1, y1, name], scene, source instance ids
    out_dir/meta.json                      parameters, source hashes, counts, label statistics (written last)

Splits: ``train`` and ``val`` use only source-train glyphs, disjoint per instance (val gets a fixed 10 % of every
class's source-train pool); ``test`` uses only source-test glyphs and the other background photo.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw, ImageFont

from sadcl import sources
from sadcl.data.base import MultiLabelDataset, reader_options
from sadcl.data.images import DataError
from sadcl.data.manifest import read_manifest
from sadcl.data.mom30_generate import default_params, generate_mom30, params_dirname, read_meta
from sadcl.data.mom30_render import SPLITS, VARIANT_DEFAULTS

if TYPE_CHECKING:
    from sadcl.config import DataConfig

__all__ = [
    "build",
    "dataset_dir",
    "default_params",
    "generate_mom30",
    "is_generated",
    "mom30_box_samples",
    "params_dirname",
    "read_meta",
    "read_mom30",
    "save_preview",
]

_logger = logging.getLogger(__name__)


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
        try:
            generate_mom30(
                root,
                **{k: params[k] for k in params if k != "version"},
                progress=bool(o.get("progress", True)),
                workers=int(o.get("workers", 1)),
            )
        except OSError as e:  # a read-only cache: name it and SADCL_CACHE rather than a bare errno
            raise sources.cache_write_error(e) from None
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
    dataset: MultiLabelDataset, *, limit: int | None = None
) -> tuple[Iterator[tuple[Any, Any, list[tuple[int, tuple[float, float, float, float]]]]], tuple[float, float]]:
    """MOM-30 samples with their boxes, for :func:`sadcl.inference.attention.attention_box_score`.

    Args:
        dataset: A MOM-30 split read with the evaluation transform (``build_dataset`` of a ``format: mom30`` config).
        limit: At most this many images.

    Returns:
        ``(samples, box_scale)``: an iterator of ``(image [3, H, W], target [C], [(class, (x0, y0, x1, y1)), ...])``
        and the canvas -> input scale factors.
    """
    import torch

    if dataset.info is None:
        raise ValueError("attention-in-box needs MOM-30 boxes; this dataset records none")
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
