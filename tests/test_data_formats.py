"""Each dataset reader on tiny real files written to tmp_path: targets, class names, layouts, options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sadcl.config import DataConfig
from sadcl.data import DATASETS, MultiLabelDataset, build_dataset, build_loader, measure_loader
from sadcl.data.coco import read_coco
from sadcl.data.folder import read_image_folder
from sadcl.data.images import DataError
from sadcl.data.manifest import read_manifest
from sadcl.data.nuswide import read_nuswide
from sadcl.data.transforms import EvalPreset
from sadcl.data.vg500 import read_vg500
from sadcl.data.voc import VOC_CLASSES, read_voc


def write_image(path: Path, color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (20, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


# --------------------------------------------------------------------------------------------------------- COCO
def write_coco(root: Path, split: str = "train2014", official_layout: bool = False) -> Path:
    base = root / "COCO2014" if official_layout else root
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        write_image(base / split / name)
    data = {
        "images": [{"id": i, "file_name": f"{n}.jpg"} for i, n in ((10, "a"), (11, "b"), (12, "c"))],
        # deliberately not in id order: columns must follow ascending category id
        "categories": [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 1, "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 90, "iscrowd": 1},  # crowd counts, as official
            {"id": 3, "image_id": 11, "category_id": 3, "iscrowd": 0},
            {"id": 4, "image_id": 11, "category_id": 3, "iscrowd": 0},
        ],
    }
    ann = base / "annotations" / f"instances_{split}.json"
    ann.parent.mkdir(parents=True, exist_ok=True)
    ann.write_text(json.dumps(data, indent=1))
    return ann


def test_coco_targets_and_class_order(tmp_path, capsys):
    write_coco(tmp_path)
    ds = read_coco(root=tmp_path, split="train")
    assert ds.class_names == ["person", "car", "toothbrush"]
    assert ds.targets.dtype == torch.float32
    assert ds.targets.tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]  # c.jpg has no annotation: kept, all zero
    assert ds.paths[0].endswith("train2014/a.jpg") and ds.ignore is None
    assert capsys.readouterr().out == ""  # pycocotools' prints are captured, not leaked to stdout
    dropped = read_coco(root=tmp_path, split="train", keep_empty=False)
    assert len(dropped) == 2


def test_coco_official_layout_via_registry(tmp_path):
    write_coco(tmp_path, "val2014", official_layout=True)
    cfg = DataConfig(format="coco", root=str(tmp_path), options={"keep_empty": False})
    ds = build_dataset(cfg, "val", EvalPreset(img_size=32))
    img, target, ignore = ds[0]
    assert img.shape == (3, 32, 32) and target.tolist() == [1, 0, 1] and ignore.tolist() == [False] * 3


# ---------------------------------------------------------------------------------------------------------- VOC
def voc_xml(objects: list[tuple[str, int]]) -> str:
    objs = "".join(f"<object><name>{n}</name><difficult>{d}</difficult></object>" for n, d in objects)
    return f"<annotation><filename>x.jpg</filename>{objs}</annotation>"


def write_voc(root: Path, year: int = 2007) -> Path:
    base = root / "VOCdevkit" / f"VOC{year}"
    ann = {
        "000001": [("dog", 0), ("person", 0)],
        "000002": [("cat", 1)],
        "000003": [("cat", 1), ("cat", 0), ("car", 1)],
    }
    for image_id, objs in ann.items():
        write_image(base / "JPEGImages" / f"{image_id}.jpg")
        (base / "Annotations").mkdir(parents=True, exist_ok=True)
        (base / "Annotations" / f"{image_id}.xml").write_text(voc_xml(objs))
    (base / "ImageSets" / "Main").mkdir(parents=True)
    # the last line has no newline: the official line[:-1] would read "00000"
    (base / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n000002\n000003")
    return base


def test_voc_difficult_drop_and_ignore(tmp_path):
    write_voc(tmp_path)
    c = {n: VOC_CLASSES.index(n) for n in ("dog", "person", "cat", "car")}
    drop = read_voc(root=tmp_path, split="trainval", difficult="drop")
    assert drop.class_names == VOC_CLASSES and len(drop) == 3
    assert drop.paths[2].endswith("000003.jpg")  # last id intact
    t = drop.targets
    assert t[0, c["dog"]] == 1 and t[0, c["person"]] == 1 and t[0].sum() == 2
    assert t[1].sum() == 0  # difficult-only cat -> negative (official)
    assert t[2, c["cat"]] == 1 and t[2, c["car"]] == 0
    assert drop.ignore is None

    ign = read_voc(root=tmp_path, split="trainval", difficult="ignore")
    assert torch.equal(ign.targets, drop.targets)
    assert ign.ignore.dtype == torch.bool
    assert ign.ignore[1, c["cat"]] and ign.ignore[1].sum() == 1
    assert ign.ignore[2, c["car"]] and not ign.ignore[2, c["cat"]]  # cat also has a normal instance: positive
    assert not ign.ignore[0].any()


def test_voc_registry_year_and_bad_difficult(tmp_path):
    write_voc(tmp_path, 2012)
    ds = build_dataset(DataConfig(format="voc2012", root=str(tmp_path), options={"difficult": "ignore"}), "trainval")
    assert len(ds) == 3 and ds.ignore is not None
    with pytest.raises(DataError, match="difficult"):
        read_voc(root=tmp_path, split="trainval", year=2012, difficult="maybe")
    with pytest.raises(DataError, match="available splits"):
        read_voc(root=tmp_path, split="test", year=2012)


# ----------------------------------------------------------------------------------------------------- NUS-WIDE
def write_nus(root: Path, rows: list[list[int]]) -> None:
    names = [f"actor\\{i:04d}_1.jpg" for i in range(len(rows))]  # Windows separators, as shipped
    for i in range(len(rows)):
        write_image(root / "Flickr" / "actor" / f"{i:04d}_1.jpg")
    (root / "ImageList").mkdir(parents=True)
    (root / "ImageList" / "TrainImagelist.txt").write_text("\n".join(names) + "\n")
    (root / "Groundtruth").mkdir(parents=True)
    (root / "Groundtruth" / "Labels_Train.txt").write_text("\n".join(" ".join(map(str, r)) for r in rows) + "\n")


def test_nuswide_labels_and_empty_rows(tmp_path):
    rows = [[0] * 81 for _ in range(3)]
    rows[0][0] = rows[0][80] = 1
    rows[2][5] = 1  # row 1 stays empty: dropped by default (official)
    write_nus(tmp_path, rows)
    ds = read_nuswide(root=tmp_path, split="train")
    assert len(ds) == 2 and len(ds.class_names) == 81
    assert ds.class_names[0] == "airport" and ds.class_names[80] == "zebra"
    assert ds.targets[0, [0, 80]].tolist() == [1, 1] and ds.targets[1, 5] == 1
    assert ds.paths[1].replace("\\", "/").endswith("Flickr/actor/0002_1.jpg")
    keep = read_nuswide(root=tmp_path, split="train", keep_empty=True)
    assert len(keep) == 3 and keep.targets[1].sum() == 0
    (tmp_path / "Concepts81.txt").write_text("\n".join(f"c{i}" for i in range(81)))
    assert read_nuswide(root=tmp_path, split="train").class_names[3] == "c3"


# ----------------------------------------------------------------------------------------------------------- VG
def test_vg500(tmp_path):
    base = tmp_path / "VG"
    for name in ("1.jpg", "2.jpg"):
        write_image(base / "VG_100K" / name)
    (base / "train_list_500.txt").write_text("1.jpg\n2.jpg")
    (base / "vg_category_500_labels_index.json").write_text(json.dumps({"1.jpg": [0, 499], "2.jpg": [7]}))
    ds = read_vg500(root=tmp_path, split="train")
    assert ds.targets.shape == (2, 500) and ds.targets[0, [0, 499]].tolist() == [1, 1] and ds.targets[1].sum() == 1
    assert ds.class_names[7] == "class_007"
    (base / "classes.txt").write_text("\n".join(f"obj{i}" for i in range(500)))
    assert build_dataset(DataConfig(format="vg500", root=str(tmp_path)), "train").class_names[7] == "obj7"


# ---------------------------------------------------------------------------------------------------- manifests
def test_csv_manifest_collects_sorted_classes(tmp_path):
    write_image(tmp_path / "img" / "a.png")
    write_image(tmp_path / "img" / "b.png")
    (tmp_path / "train.csv").write_text('image,labels,note\nimg/a.png,dog cat,x\nimg/b.png,"zebra",y\n')
    ds = read_manifest(tmp_path / "train.csv")
    assert ds.class_names == ["cat", "dog", "zebra"]
    assert ds.targets.tolist() == [[1, 1, 0], [0, 0, 1]]
    assert ds.info[0] == {"note": "x"}


def test_jsonl_manifest_columns_sep_and_class_file(tmp_path):
    write_image(tmp_path / "a.jpg")
    write_image(tmp_path / "b.jpg")
    (tmp_path / "names.txt").write_text("sky\nsea\nsand\n")
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"file": "a.jpg", "tags": ["sea", "sky"]})
        + "\n\n"
        + json.dumps({"file": "b.jpg", "tags": "sand|sea"})
        + "\n"
    )
    ds = read_manifest(
        tmp_path / "m.jsonl",
        image_column="file",
        labels_column="tags",
        label_sep="|",
        class_names=str(tmp_path / "names.txt"),
    )
    assert ds.class_names == ["sky", "sea", "sand"]
    assert ds.targets.tolist() == [[1, 1, 0], [0, 1, 1]]
    cfg = DataConfig(
        format="manifest",
        root=str(tmp_path),
        options={
            "manifest": "m.jsonl",
            "image_column": "file",
            "labels_column": "tags",
            "label_sep": "|",
            "class_names": ["sand", "sea", "sky"],
        },
    )
    assert build_dataset(cfg, "train").targets.tolist() == [[0, 1, 1], [1, 1, 0]]


def test_image_folder_layout(tmp_path):
    write_image(tmp_path / "images" / "x" / "1.jpg")
    write_image(tmp_path / "images" / "2.jpg")
    (tmp_path / "train.txt").write_text("# image labels\nx/1.jpg a b\n2.jpg c\n")
    ds = read_image_folder(tmp_path, labels_file="train.txt", images="images")
    assert ds.class_names == ["a", "b", "c"] and ds.targets.tolist() == [[1, 1, 0], [0, 0, 1]]
    cfg = DataConfig(format="folder", root=str(tmp_path), options={"images": "images"})
    assert len(build_dataset(cfg, "train")) == 2


# ----------------------------------------------------------------------------------------- registry and loader
def test_registry_errors_name_choices(tmp_path):
    with pytest.raises(ValueError, match="valid:.*coco.*mom30"):
        build_dataset(DataConfig(format="imagenet"), "train")
    with pytest.raises(DataError, match="unknown key.*keep_emty"):
        build_dataset(DataConfig(format="coco", root=str(tmp_path), options={"keep_emty": True}), "train")
    assert {"coco", "voc", "voc2007", "voc2012", "nuswide", "vg500", "manifest", "folder", "mom30"} <= set(DATASETS)


def test_dataset_item_subset_and_loader(tmp_path):
    paths = [str(write_image(tmp_path / f"{i}.png", (i * 20, 0, 0))) for i in range(6)]
    targets = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1, 2]]
    ds = MultiLabelDataset(paths, targets, ["a", "b", "c"], transform=EvalPreset(img_size=16))
    img, t, _ = ds[4]
    assert img.shape == (3, 16, 16) and t.tolist() == [0, 1, 0]
    sub = ds.subset([1, 2])
    assert len(sub) == 2 and sub.targets.tolist() == [[0, 1, 0], [0, 0, 1]]
    loader = build_loader(ds, batch_size=4, shuffle=True, workers=0, drop_last=True, seed=1)
    batch = next(iter(loader))
    assert batch[0].shape == (4, 3, 16, 16) and batch[1].shape == (4, 3)
    order1 = [t.argmax().item() for t in batch[1]]
    loader2 = build_loader(ds, batch_size=4, shuffle=True, workers=0, drop_last=True, seed=1)
    assert order1 == [t.argmax().item() for t in next(iter(loader2))[1]]  # same seed, same order
    stats = measure_loader(build_loader(ds, batch_size=2, workers=0), batches=2, warmup=1)
    assert stats["images"] == 4 and stats["images_per_s"] > 0


def test_val_holdout_carves_a_fixed_disjoint_split(tmp_path):
    for i in range(10):
        write_image(tmp_path / f"{i}.png")
    (tmp_path / "train.csv").write_text(
        "image,labels\n" + "".join(f"{i}.png,{'a' if i % 2 else 'b'}\n" for i in range(10))
    )
    cfg = DataConfig(format="manifest", root=str(tmp_path), options={"manifest": "train.csv"}, val_holdout=0.3)
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert len(train) == 7 and len(val) == 3
    assert not set(train.paths) & set(val.paths)
    assert sorted(train.paths + val.paths) == sorted(str(tmp_path / f"{i}.png") for i in range(10))
    assert build_dataset(cfg, "val").paths == val.paths  # the same holdout every time
    assert len(build_dataset(DataConfig(**{**cfg.__dict__, "val_holdout": 4}), "val")) == 4
    with pytest.raises(ValueError, match="val_holdout"):
        build_dataset(DataConfig(**{**cfg.__dict__, "val_holdout": 10}), "val")
