"""MS-COCO 2014/2017 ``instances_*.json`` -> MultiLabelDataset (docs/spec.md §5 ``coco14``).

Labels are the set of annotated category ids per image (crowd annotations included, as official), mapped to columns
in ascending category-id order (COCO's 1..90 -> 0..79). Images without any annotation keep an all-zero row
(official) unless ``keep_empty=False``.

``missing="unknown"`` (partial labels, the LVIS federated convention): a category an image has no annotation of is
unknown rather than negative, unless the image lists it in ``neg_category_ids`` (verified absent); an image without
any annotation nor negative list then has every label unknown.

Layouts found under ``root`` (first match wins): ``annotations/instances_<split><year>.json`` with images in
``<split><year>/`` (the COCO download), or the official code's ``COCO<year>/annotations/...`` and
``COCO<year>/<split><year>/``. ``annotations=`` / ``images=`` override the search.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sadcl.data.base import BadInput, MultiLabelDataset, dataset_from_rows, reader_options
from sadcl.data.images import DataError

_logger = logging.getLogger(__name__)


def load_json(path: Path) -> Any:
    """``json.load`` whose error names the file, line and column."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}: line {e.lineno} column {e.colno}: malformed JSON ({e.msg}); expected a valid JSON document"
        ) from None


def _split_name(split: str, year: int) -> str:
    # "train" -> "train2014"; an explicit "val2017" stays as is.
    return split if split[-4:].isdigit() else f"{split}{year}"


def _locate(root: Path, split: str, year: int) -> tuple[Path, Path]:
    name = _split_name(split, year)
    for base in (root, root / f"COCO{year}", root / f"coco{year}"):
        ann = base / "annotations" / f"instances_{name}.json"
        if ann.is_file():
            images = next((d for d in (base / name, base / "images" / name) if d.is_dir()), base / name)
            return ann, images
    raise DataError(
        f"{root}: no COCO annotations for split {split!r} (looked for annotations/instances_{name}.json "
        f"and COCO{year}/annotations/instances_{name}.json)"
    )


def read_coco(
    *,
    root: str | os.PathLike | None,
    split: str,
    year: int = 2014,
    annotations: str | None = None,
    images: str | None = None,
    keep_empty: bool = True,
    missing: str = "negative",
    skip_bad: bool = False,
    transform: Callable | None = None,
) -> MultiLabelDataset:
    """Read a COCO instances file.

    Args:
        root: Dataset directory (see the module docstring); may be None when ``annotations`` and ``images`` are set.
        split: ``train``/``val`` (+ ``year``) or an explicit ``train2014``-style name.
        year: 2014 or 2017.
        annotations: Explicit path of the instances JSON.
        images: Explicit image directory.
        keep_empty: Keep images with no annotation as all-zero rows (official) instead of dropping them.
        missing: A category without an annotation on an image is ``"negative"`` (official) or ``"unknown"``
            (except the image's ``neg_category_ids``; see the module docstring).
        skip_bad: Log and skip malformed annotations and unreadable images instead of raising.
        transform: Image transform.

    Returns:
        A MultiLabelDataset with ``targets [N, C]`` (C = number of categories in the file, 80 for COCO).
    """
    from pycocotools.coco import COCO

    if missing not in ("negative", "unknown"):
        raise DataError(f"COCO missing={missing!r}; expected 'negative' (official) or 'unknown' (partial labels)")

    if annotations is not None:
        ann_path = Path(annotations)
        img_dir = Path(images) if images else ann_path.parent.parent / _split_name(split, year)
    elif root is not None:
        ann_path, img_dir = _locate(Path(root), split, year)
        img_dir = Path(images) if images else img_dir
    else:
        raise DataError("COCO: set data.root or data.options.annotations")
    data = load_json(ann_path)
    bad = BadInput(str(ann_path), skip_bad=skip_bad)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories")):
        raise DataError(f"{ann_path}: expected a JSON object with lists 'images', 'categories' and 'annotations'")
    if not isinstance(data.get("annotations"), list):  # without it every image would be all-negative
        raise DataError(
            f"{ann_path}: no 'annotations' list (required: the labels of the images; an image-info-only "
            "file such as image_info_test2014.json cannot be used for training or evaluation)"
        )
    cats = []
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or "name" not in c:
            raise DataError(f"{ann_path}: categories[{i}]: expected an object with integer 'id' and 'name', got {c!r}")
        cats.append(c)
    cat_ids = sorted(c["id"] for c in cats)
    imgs = []
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
            bad.report(f"{ann_path}: images[{i}]: expected an object with 'id' and string 'file_name', got {im!r}")
            continue
        imgs.append(im)
    img_ids = {im["id"] for im in imgs}
    anns = []
    for i, a in enumerate(data.get("annotations") or []):
        if not isinstance(a, dict) or "image_id" not in a or "category_id" not in a:
            bad.report(f"{ann_path}: annotations[{i}]: expected an object with 'image_id' and 'category_id'")
        elif a["category_id"] not in cat_ids:
            bad.report(
                f"{ann_path}: annotations[{i}]: unknown category_id {a['category_id']!r} "
                f"(not among the {len(cat_ids)} categories)"
            )
        elif a["image_id"] not in img_ids:
            bad.report(f"{ann_path}: annotations[{i}]: image_id {a['image_id']!r} is not in 'images'")
        else:
            # Only the two fields we use; the list position is a unique id (pycocotools indexes by 'id').
            anns.append({"id": i, "image_id": a["image_id"], "category_id": a["category_id"]})
    coco = COCO()
    coco.dataset = {**data, "images": imgs, "annotations": anns, "categories": cats}
    with contextlib.redirect_stdout(io.StringIO()) as out:  # pycocotools prints progress; keep stdout clean
        coco.createIndex()
    _logger.debug("pycocotools: %s", out.getvalue().strip())

    col = {cid: j for j, cid in enumerate(cat_ids)}
    class_names = [coco.cats[cid]["name"] for cid in cat_ids]
    paths, rows, unknowns = [], [], []
    for im in imgs:  # file order, as official
        row = np.zeros(len(cat_ids), dtype=np.float32)
        for a in coco.imgToAnns.get(im["id"], []):  # crowd annotations included, as official
            row[col[a["category_id"]]] = 1.0
        if not keep_empty and not row.any():
            continue
        unknown = np.zeros(len(cat_ids), bool)
        if missing == "unknown":
            unknown = row == 0
            negs = im.get("neg_category_ids") or []
            if not isinstance(negs, list) or any(n not in col for n in negs):
                bad.report(
                    f"{ann_path}: image {im['id']!r}: neg_category_ids must be a list of category ids of the file, "
                    f"got {negs!r}"
                )
                continue
            unknown[[col[n] for n in negs]] = False
        paths.append(str(img_dir / im["file_name"]))
        rows.append(row)
        unknowns.append(unknown)
    bad.summary(len(paths))
    _logger.info("COCO %s: %d images, %d classes", ann_path.name, len(paths), len(class_names))
    return dataset_from_rows(paths, rows, class_names, unknown=unknowns, transform=transform, skip_bad=skip_bad)


def build(cfg: Any, split: str, transform: Callable | None = None) -> MultiLabelDataset:
    """``DataConfig`` -> :func:`read_coco` (options: year, annotations, images, keep_empty, missing)."""
    o = reader_options(cfg.options, ("year", "annotations", "images", "keep_empty", "missing"), "coco")
    return read_coco(
        root=cfg.root,
        split=split,
        year=int(o.get("year", 2014)),
        annotations=o.get("annotations"),
        images=o.get("images"),
        keep_empty=bool(o.get("keep_empty", True)),
        missing=str(o.get("missing", "negative")),
        skip_bad=cfg.skip_bad,
        transform=transform,
    )
