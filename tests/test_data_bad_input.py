"""Bad input: broken/odd images and malformed label files raise errors naming the file and place, or are skipped
with a log line and a count when skip_bad=True."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sadcl.config import DataConfig
from sadcl.data import build_dataset
from sadcl.data.base import MultiLabelDataset
from sadcl.data.coco import read_coco
from sadcl.data.images import DataError, ImageLoadError, load_image
from sadcl.data.manifest import read_manifest
from sadcl.data.nuswide import read_nuswide
from sadcl.data.vg500 import read_vg500
from sadcl.data.voc import read_voc


def jpeg_bytes(size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def write_manifest(tmp_path: Path, body: str, name: str = "m.csv", images: tuple[str, ...] = ("a.png", "b.png")):
    for im in images:
        Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / im)
    (tmp_path / name).write_text(body)
    return tmp_path / name


# ------------------------------------------------------------------------------------------------------- images
def test_truncated_jpeg_names_file(tmp_path):
    path = tmp_path / "cut.jpg"
    data = jpeg_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match=r"cut\.jpg.*(truncated|decode)"):
        load_image(path)
    ds = MultiLabelDataset([str(path)], [[1.0]], ["x"])
    with pytest.raises(ImageLoadError, match="cut.jpg"):
        ds[0]


def test_missing_and_non_image_files(tmp_path):
    with pytest.raises(ImageLoadError, match=r"nope\.png: image file not found"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(ImageLoadError, match=r"text\.jpg: not a recognised image"):
        load_image(tmp_path / "text.jpg")


def test_skip_bad_drops_unreadable_images_with_count(tmp_path, caplog):
    good = tmp_path / "good.jpg"
    good.write_bytes(jpeg_bytes())
    (tmp_path / "cut.jpg").write_bytes(jpeg_bytes()[:300])
    lines = "image,labels\ngood.jpg,a\ncut.jpg,a\nmissing.jpg,b\n"
    (tmp_path / "m.csv").write_text(lines)
    with pytest.raises(DataError, match=r"missing\.jpg: image file not found"):
        read_manifest(tmp_path / "m.csv")  # existence is checked up front
    with caplog.at_level(logging.WARNING):
        ds = read_manifest(tmp_path / "m.csv", skip_bad=True)
    assert ds.paths == [str(good)]
    assert "cut.jpg" in caplog.text and "missing.jpg" in caplog.text
    assert "skipped 2 of 3 images" in caplog.text


def test_mode_conversions(tmp_path):
    gray = tmp_path / "l.png"
    Image.new("L", (4, 4), 77).save(gray)
    assert load_image(gray).mode == "RGB" and load_image(gray).getpixel((0, 0)) == (77, 77, 77)

    rgba = tmp_path / "rgba.png"
    arr = np.zeros((4, 4, 4), np.uint8)
    arr[..., 0] = 255
    arr[:2, :, 3] = 255  # top half opaque red, bottom half fully transparent
    Image.fromarray(arr, "RGBA").save(rgba)
    im = load_image(rgba)
    assert im.getpixel((0, 0)) == (255, 0, 0) and im.getpixel((0, 3)) == (255, 255, 255)  # composited on white

    la = tmp_path / "la.png"
    Image.fromarray(np.dstack([np.full((4, 4), 10, np.uint8), np.full((4, 4), 255, np.uint8)]), "LA").save(la)
    assert load_image(la).getpixel((1, 1)) == (10, 10, 10)

    pal = tmp_path / "p.png"
    Image.new("RGB", (4, 4), (0, 128, 255)).convert("P", palette=Image.ADAPTIVE).save(pal)
    assert load_image(pal).getpixel((0, 0)) == (0, 128, 255)

    cmyk = tmp_path / "cmyk.jpg"
    Image.new("RGB", (8, 8), (255, 0, 0)).convert("CMYK").save(cmyk, "JPEG", quality=100)
    r, g, b = load_image(cmyk).getpixel((4, 4))
    assert r > 240 and g < 15 and b < 15


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    arr = np.array([[0, 257, 32896, 65535]], np.uint16)
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")  # really a 16-bit file
    px = np.asarray(load_image(path))[0, :, 0]
    assert px.tolist() == [0, 1, 128, 255]  # a plain convert("RGB") would give 255 for all but the first


# ------------------------------------------------------------------------------------------------------ labels
def test_unknown_class_and_empty_row(tmp_path):
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    path = write_manifest(tmp_path, "image,labels\na.png,cat cow\nb.png,\n")
    with pytest.raises(DataError, match=r"m\.csv: line 2: unknown class name\(s\) \['cow'\]"):
        read_manifest(path)
    path = write_manifest(tmp_path, "image,labels\na.png,cat\nb.png,\n")
    with pytest.raises(DataError, match=r"m\.csv: line 3: no labels for 'b.png'"):
        read_manifest(path)
    ds = read_manifest(path, allow_empty=True)
    assert ds.targets.tolist() == [[1, 0], [0, 0]]


def test_malformed_csv_line(tmp_path):
    path = write_manifest(tmp_path, "image,labels\na.png,cat\nb.png,dog,extra\n")
    with pytest.raises(DataError, match=r"m\.csv: line 3: expected 2 fields \(image, labels\), got 3"):
        read_manifest(path)
    path = write_manifest(tmp_path, "file,labels\na.png,cat\n")
    with pytest.raises(DataError, match=r"line 1: header has no column 'image'"):
        read_manifest(path)


def test_malformed_jsonl_line(tmp_path):
    body = json.dumps({"image": "a.png", "labels": ["cat"]}) + "\n{bad json\n" + json.dumps(["b.png"]) + "\n"
    path = write_manifest(tmp_path, body, "m.jsonl")
    with pytest.raises(DataError, match=r"m\.jsonl: line 2 column 2: malformed JSON"):
        read_manifest(path)


def test_skip_bad_counts_label_problems(tmp_path, caplog):
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    body = (
        "\n".join(
            [
                json.dumps({"image": "a.png", "labels": ["cat"]}),
                "{oops",
                json.dumps({"image": "b.png", "labels": ["emu"]}),
                json.dumps({"image": "b.png", "labels": []}),
                json.dumps({"image": "b.png", "labels": "dog"}),
                json.dumps([1, 2]),
            ]
        )
        + "\n"
    )
    path = write_manifest(tmp_path, body, "m.jsonl")
    with caplog.at_level(logging.WARNING):
        ds = read_manifest(path, skip_bad=True)
    assert ds.targets.tolist() == [[1, 0], [0, 1]]
    assert "skipped 4 bad entries" in caplog.text
    assert "line 2" in caplog.text and "emu" in caplog.text and "line 6" in caplog.text


def test_malformed_xml_names_file_and_line(tmp_path):
    base = tmp_path / "VOC2007"
    (base / "Annotations").mkdir(parents=True)
    (base / "ImageSets" / "Main").mkdir(parents=True)
    (base / "JPEGImages").mkdir()
    for i in ("1", "2", "3"):
        Image.new("RGB", (8, 8)).save(base / "JPEGImages" / f"{i}.jpg")
    (base / "Annotations" / "1.xml").write_text("<annotation><object><name>dog</name></object></annotation>")
    (base / "Annotations" / "2.xml").write_text("<annotation>\n<object><name>dog</name>\n</annotation>")
    (base / "Annotations" / "3.xml").write_text("<annotation><object><name>dragon</name></object></annotation>")
    (base / "ImageSets" / "Main" / "test.txt").write_text("1\n2\n3\n")
    with pytest.raises(DataError, match=r"2\.xml: line 3 column \d+: malformed XML"):
        read_voc(root=tmp_path, split="test")
    (base / "ImageSets" / "Main" / "test.txt").write_text("1\n3\n")
    with pytest.raises(DataError, match=r"3\.xml: unknown class name\(s\) \['dragon'\]"):
        read_voc(root=tmp_path, split="test")
    (base / "ImageSets" / "Main" / "test.txt").write_text("1\n2\n3\n")
    ds = read_voc(root=tmp_path, split="test", skip_bad=True)
    assert len(ds) == 1


def test_malformed_coco_json(tmp_path):
    (tmp_path / "annotations").mkdir()
    ann = tmp_path / "annotations" / "instances_train2014.json"
    ann.write_text('{"images": [\n{"id": 1, "file_name": "a.jpg"},\n{"id": 2 "file_name": "b.jpg"}]}')
    with pytest.raises(DataError, match=r"instances_train2014\.json: line 3 column \d+: malformed JSON"):
        read_coco(root=tmp_path, split="train")
    (tmp_path / "train2014").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "train2014" / "a.jpg")
    ann.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.jpg"}],
                "categories": [{"id": 1, "name": "x"}],
                "annotations": [{"image_id": 1, "category_id": 1}, {"image_id": 1, "category_id": 7}],
            }
        )
    )
    with pytest.raises(DataError, match=r"annotations\[1\]: unknown category_id 7"):
        read_coco(root=tmp_path, split="train")
    assert read_coco(root=tmp_path, split="train", skip_bad=True).targets.tolist() == [[1.0]]


def test_nuswide_bad_line_and_length_mismatch(tmp_path):
    (tmp_path / "ImageList").mkdir()
    (tmp_path / "Groundtruth").mkdir()
    (tmp_path / "ImageList" / "TestImagelist.txt").write_text("a\\1.jpg\na\\2.jpg\n")
    good = " ".join(["1"] + ["0"] * 80)
    (tmp_path / "Groundtruth" / "Labels_Test.txt").write_text(good + "\n" + " ".join(["1"] * 80) + "\n")
    with pytest.raises(DataError, match=r"Labels_Test\.txt: line 2: expected 81 space-separated integers, got 80"):
        read_nuswide(root=tmp_path, split="test")
    (tmp_path / "Groundtruth" / "Labels_Test.txt").write_text(good + "\n")
    with pytest.raises(DataError, match="1 label lines but TestImagelist.txt lists 2 images"):
        read_nuswide(root=tmp_path, split="test")


def test_vg500_bad_entries(tmp_path):
    (tmp_path / "train_list_500.txt").write_text("1.jpg\n2.jpg\n3.jpg\n")
    (tmp_path / "vg_category_500_labels_index.json").write_text(json.dumps({"1.jpg": [1], "2.jpg": [600]}))
    with pytest.raises(DataError, match=r"'2\.jpg'.*expected a list of integer label ids in \[0, 500\)"):
        read_vg500(root=tmp_path, split="train")
    (tmp_path / "VG_100K").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "VG_100K" / "1.jpg")
    ds = build_dataset(DataConfig(format="vg500", root=str(tmp_path), skip_bad=True), "train")
    assert len(ds) == 1  # 2.jpg: bad id; 3.jpg: not in the index
