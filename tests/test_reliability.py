"""Issue #11 cases fixed so far: one image decoder for every entry point (EXIF orientation, serve == loader), YAML
numbers in exponent form, and MOM-30 generation that never overwrites a user's files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sadcl.config import ConfigError, load_config
from sadcl.data.images import decode_rgb, load_image
from sadcl.data.mom30 import generate_mom30


def _kinds() -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (20, 30, 4), dtype=np.uint8), "RGBA")
    sixteen = Image.fromarray((rng.integers(0, 65536, (20, 30))).astype(np.uint16))
    pal = Image.fromarray(rng.integers(0, 8, (20, 30), dtype=np.uint8), "P")
    pal.putpalette([v for i in range(8) for v in (i * 30, 255 - i * 30, 128)])
    pal.info["transparency"] = 3
    return {"rgba": rgba, "16bit": sixteen, "palette_transparent": pal}


@pytest.mark.parametrize("kind", ["rgba", "16bit", "palette_transparent"])
def test_serve_decodes_uploads_like_the_loader(tmp_path: Path, kind: str) -> None:
    pytest.importorskip("fastapi")
    from sadcl.inference.serve import decode_image

    img = _kinds()[kind]
    path = tmp_path / f"{kind}.png"
    img.save(path, transparency=3) if kind == "palette_transparent" else img.save(path)
    from_loader = np.asarray(load_image(path))
    from_upload = np.asarray(decode_image(path.read_bytes()))
    np.testing.assert_array_equal(from_upload, from_loader)
    assert not np.array_equal(from_loader, np.asarray(Image.open(path).convert("RGB")))  # the case PIL gets wrong


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    arr = np.zeros((10, 40, 3), dtype=np.uint8)
    arr[:, :5] = 255  # a white band on the left of a wide image
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    path = tmp_path / "phone.jpg"
    img.save(path, exif=exif.tobytes(), quality=95)
    loaded = load_image(path)
    assert loaded.size == (10, 40)  # upright: tall, as a viewer shows it
    top = np.asarray(loaded)[:5].mean()
    assert top > 200  # the left band is now at the top
    with Image.open(path) as raw:
        assert decode_rgb(raw).size == (10, 40)


@pytest.mark.parametrize("text, value", [("1e-4", 1e-4), ("1.0e9", 1e9), ("-2E-3", -2e-3), ("5e+2", 500.0)])
def test_exponent_numbers_in_overrides_and_files(tmp_path: Path, text: str, value: float) -> None:
    assert load_config(None, [f"optim.lr={abs(value) if value > 0 else 1e-3}"]).optim.lr > 0
    if value > 0:
        assert load_config(None, [f"optim.lr={text}"]).optim.lr == value
    f = tmp_path / "c.yaml"
    f.write_text(f"optim:\n  weight_decay: {text.lstrip('-')}\n")
    assert load_config(f).optim.weight_decay == abs(value)


def test_a_bad_override_is_blamed_on_the_override(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 0.001\n")
    with pytest.raises(ConfigError, match=r"override 'optim\.lr=fast': optim\.lr must be a number"):
        load_config(f, ["optim.lr=fast"])


def test_mom30_refuses_a_directory_with_other_files(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "train.csv").write_text("my,own,data\n")
    with pytest.raises(ValueError, match=r"not empty.*train\.csv"):
        generate_mom30(out, n_train=4, n_val=2, n_test=2, progress=False)
    assert (out / "train.csv").read_text() == "my,own,data\n"


def test_mom30_cli_refuses_without_touching_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from sadcl.cli import main

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert (
        main(["data", "mom30", "--out", str(out), "--n-train", "4", "--n-val", "2", "--n-test", "2", "--no-progress"])
        == 2
    )
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_written_files_have_ordinary_permissions(tmp_path: Path) -> None:
    import os

    from sadcl.checkpoint import save_checkpoint
    from sadcl.io import atomic_write_text

    old = os.umask(0o022)
    try:
        for path in (atomic_write_text(tmp_path / "a.json", "{}"), save_checkpoint({"x": 1}, tmp_path / "c.pt")):
            assert (path.stat().st_mode & 0o777) == 0o644, path
    finally:
        os.umask(old)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import torch

    from sadcl.checkpoint import save_checkpoint

    target = save_checkpoint({"x": torch.ones(2)}, tmp_path / "last.pt")
    before = target.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match=r"could not write .*last\.pt: no space left on device \(previous file kept\)"):
        save_checkpoint({"x": torch.zeros(2)}, target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_coco_json_without_annotations_is_an_error(tmp_path: Path) -> None:
    import json

    from sadcl.data.coco import read_coco
    from sadcl.data.images import DataError

    (tmp_path / "annotations").mkdir()
    (tmp_path / "train2014").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "train2014" / "a.jpg")
    (tmp_path / "annotations" / "instances_train2014.json").write_text(
        json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 1, "name": "x"}]})
    )
    with pytest.raises(DataError, match=r"instances_train2014\.json: no 'annotations' list"):
        read_coco(root=tmp_path, split="train")


def test_a_training_split_without_any_positive_is_refused(tmp_path: Path) -> None:
    from sadcl.data.images import DataError
    from sadcl.training.train import run_training

    img = tmp_path / "imgs"
    img.mkdir()
    for i in range(4):
        Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(img / f"{i}.png")
    (tmp_path / "classes.txt").write_text("a\nb\n")
    for split in ("train", "val", "test"):
        (tmp_path / f"{split}.csv").write_text("image,labels\n" + "".join(f"imgs/{i}.png,\n" for i in range(4)))
    cfg = load_config(
        None,
        [
            "data.format=manifest",
            f"data.root={tmp_path}",
            "data.options={allow_empty: true}",
            "model.backbone=resnet18",
            "model.pretrained=false",
            "model.num_classes=2",
            "model.hidden_dim=16",
            "model.nhead=2",
            "model.dim_feedforward=32",
            "model.proj_dim=8",
            "model.img_size=32",
            "data.workers=0",
            f"train.output_dir={tmp_path / 'run'}",
        ],
    )
    with pytest.raises(ConfigError, match="'train' split of the manifest dataset has no positive label"):
        run_training(cfg, stages=("baseline",))
    assert not (tmp_path / "run" / "baseline" / "last.pt").exists()
    # A validation split naming a class the training split does not have is refused before training.
    (tmp_path / "classes.txt").unlink()
    (tmp_path / "train.csv").write_text("image,labels\n" + "".join(f"imgs/{i}.png,{'ab'[i % 2]}\n" for i in range(4)))
    (tmp_path / "val.csv").write_text("image,labels\nimgs/0.png,a\nimgs/1.png,c\n")
    with pytest.raises(DataError, match=r"val\.csv: line 3: unknown class name\(s\) \['c'\]"):
        run_training(cfg, stages=("baseline",))
    assert not (tmp_path / "run" / "baseline" / "last.pt").exists()
    # An empty validation split is refused before training too (not a crash in torch.cat after an epoch).
    (tmp_path / "train.csv").write_text("image,labels\n" + "".join(f"imgs/{i}.png,{'ab'[i % 2]}\n" for i in range(4)))
    (tmp_path / "val.csv").write_text("image,labels\n")
    with pytest.raises(ConfigError, match="the 'val' split of the manifest dataset is empty"):
        run_training(cfg, stages=("baseline",))
    assert not (tmp_path / "run" / "baseline" / "last.pt").exists()


def _images(root: Path, n: int) -> None:
    (root / "im").mkdir(exist_ok=True)
    for i in range(n):
        Image.new("RGB", (8, 8), (i * 10, 0, 0)).save(root / "im" / f"{i}.png")


def test_manifest_with_a_byte_order_mark_and_another_delimiter(tmp_path: Path) -> None:
    from sadcl.data.manifest import read_manifest

    _images(tmp_path, 2)
    (tmp_path / "bom.csv").write_bytes("image,labels\nim/0.png,cat\nim/1.png,dog cat\n".encode("utf-8-sig"))
    ds = read_manifest(tmp_path / "bom.csv")
    assert ds.class_names == ["cat", "dog"] and ds.targets.tolist() == [[1, 0], [1, 1]]
    (tmp_path / "semi.csv").write_text("image;labels\nim/0.png;cat\nim/1.png;dog\n")
    assert len(read_manifest(tmp_path / "semi.csv", delimiter=";")) == 2


def test_a_latin1_manifest_names_the_file_and_line(tmp_path: Path) -> None:
    from sadcl.data.images import DataError
    from sadcl.data.manifest import read_manifest

    _images(tmp_path, 2)
    (tmp_path / "l1.csv").write_bytes("image,labels\nim/0.png,cat\nim/1.png,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"l1\.csv: line 3: not UTF-8 text \(byte 0xe9\)"):
        read_manifest(tmp_path / "l1.csv")


def test_an_unclosed_quote_reports_every_dropped_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from sadcl.data.images import DataError
    from sadcl.data.manifest import read_manifest

    _images(tmp_path, 16)
    lines = [f"im/{i}.png,cat" for i in range(16)]
    lines[8] = 'im/8.png,"cat'  # the quote swallows lines 10 .. 17 (the rest of the file)
    (tmp_path / "q.csv").write_text("image,labels\n" + "\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"q\.csv: lines 10-17: "):
        read_manifest(tmp_path / "q.csv")
    caplog.set_level("WARNING")
    ds = read_manifest(tmp_path / "q.csv", skip_bad=True)
    assert len(ds) == 8
    assert "skipped 8 bad entries" in caplog.text


def test_joined_labels_and_duplicate_rows_are_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from sadcl.data.manifest import read_manifest

    _images(tmp_path, 2)
    (tmp_path / "j.csv").write_text("image,labels\nim/0.png,bear;bird\nim/1.png,coat\nim/0.png,bear;bird\n")
    caplog.set_level("WARNING")
    ds = read_manifest(tmp_path / "j.csv")
    assert "contain ';' on 2 line(s) (e.g. line 2, 4)" in caplog.text and "label_sep=';'" in caplog.text
    assert "line 4 repeats line 2 (im/0.png)" in caplog.text
    assert read_manifest(tmp_path / "j.csv", label_sep=";").class_names == ["bear", "bird", "coat"]
    assert len(ds) == 3


def test_every_split_uses_the_training_class_list(tmp_path: Path) -> None:
    from sadcl.config import DataConfig
    from sadcl.data import build_dataset
    from sadcl.data.images import DataError

    _images(tmp_path, 4)
    (tmp_path / "train.csv").write_text("image,labels\nim/0.png,cat\nim/1.png,dog\n")
    (tmp_path / "same_count.csv").write_text("image,labels\nim/2.png,cat\nim/3.png,eel\n")  # other names, 2 classes
    (tmp_path / "fewer.csv").write_text("image,labels\nim/2.png,dog\nim/3.png,dog\n")  # 1 class only
    data = DataConfig(format="manifest", root=str(tmp_path), options={})
    train = build_dataset(data, "train")
    assert train.class_names == ["cat", "dog"]
    # Derived per split they would silently differ; with the training list they are aligned or refused.
    assert build_dataset(data, "same_count").class_names == ["cat", "eel"]
    with pytest.raises(DataError, match=r"unknown class name\(s\) \['eel'\]"):
        build_dataset(data, "same_count", class_names=train.class_names)
    fewer = build_dataset(data, "fewer", class_names=train.class_names)
    assert fewer.class_names == ["cat", "dog"] and fewer.targets.tolist() == [[0, 1], [0, 1]]
    voc_like = DataConfig(format="manifest", root=str(tmp_path), options={"class_names": ["dog", "cat"]})
    with pytest.raises(DataError, match=r"column 0 is 'dog' instead of 'cat'"):
        build_dataset(voc_like, "train", class_names=train.class_names)


@pytest.mark.parametrize(
    "content, expect",
    [
        (b"", "the file is empty"),
        (b"hello, not a model\n", "a text file"),
        (b"PK\x03\x04" + b"\0" * 40, "damaged PyTorch file"),
        (b"\x08\x07\x12\x07pytorch", "ONNX model"),
    ],
)
def test_a_non_checkpoint_file_says_what_it_is(tmp_path: Path, content: bytes, expect: str) -> None:
    from sadcl.checkpoint import load_checkpoint

    path = tmp_path / ("model.onnx" if b"pytorch" in content else "last.pt")
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert expect in msg and "weights_only=False" not in msg and len(msg.splitlines()) == 1


def test_a_dataloader_worker_error_is_one_line() -> None:
    import torch

    from sadcl.cli import one_line
    from sadcl.data.images import ImageLoadError

    class Bad(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int):
            raise ImageLoadError("/data/x.jpg: cannot decode image (truncated); expected a complete, valid image file")

    with pytest.raises(ImageLoadError) as info:
        next(iter(torch.utils.data.DataLoader(Bad(), num_workers=1)))
    assert "Original Traceback" in str(info.value)
    assert one_line(info.value) == "/data/x.jpg: cannot decode image (truncated); expected a complete, valid image file"


def test_a_non_finite_loss_is_one_line_with_a_hint(capsys: pytest.CaptureFixture) -> None:
    import torch

    from sadcl.training.engine import train_one_epoch

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            return {"logits": x * self.w * float("nan")}

    class Crit(torch.nn.Module):
        weight_dict = {"asl": 1.0}

        def forward(self, out, t, ignore=None):
            return {"asl": out["logits"].sum()}

        def weights(self, progress=None):
            return dict(self.weight_dict)

        def total(self, terms, progress=None):
            return terms["asl"]

    loader = [(torch.ones(2, 3), torch.ones(2, 3))]
    model = Model()
    with pytest.raises(
        FloatingPointError,
        match=r"non-finite loss nan at epoch 1 step 1 \(asl=nan\); try a lower "
        r"optim\.lr",
    ):
        train_one_epoch(model, Crit(), loader, torch.optim.SGD(model.parameters(), lr=0.1), None, device="cpu", epoch=0)


def test_serve_validates_the_port_and_binds_before_announcing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import socket

    pytest.importorskip("uvicorn")
    from sadcl.cli import main

    assert main(["serve", str(tmp_path / "none.pt"), "--port", "99999"]) == 2
    assert "--port must be in 0..65535, got 99999" in capsys.readouterr().err
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["serve", str(tmp_path / "none.pt"), "--port", str(port)]) == 2
    out = capsys.readouterr()
    assert f"cannot listen on 127.0.0.1:{port}" in out.err and "serving" not in out.out


def test_a_data_section_without_format_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "mine.yaml"
    f.write_text("data:\n  root: /somewhere/photos\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml: the data section has no 'format'"):
        load_config(f)


def test_the_demo_options_do_not_leak_into_another_reader() -> None:
    from sadcl.cli.train import default_config_path

    demo = load_config(default_config_path())
    assert demo.data.format == "mom30" and demo.data.options
    other = load_config(default_config_path(), ["data.format=manifest", "data.root=/x"])
    assert other.data.options == {}
    kept = load_config(default_config_path(), ["data.format=manifest", "data.options.label_sep=;"])
    assert kept.data.options == {"label_sep": ";"}  # the new reader's options, without the old reader's


def test_a_format_override_completes_a_data_section(tmp_path: Path) -> None:
    f = tmp_path / "mine.yaml"
    f.write_text("data:\n  root: /somewhere/photos\n")
    assert load_config(f, ["data.format=manifest"]).data.format == "manifest"


def test_a_run_saved_before_the_anchor_scale_resumes_with_its_own_loss(tmp_path: Path) -> None:
    import yaml

    from sadcl.training.train import saved_run_config

    old = load_config(None).to_dict()
    del old["loss"]["sscl_anchor_scale"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    assert saved_run_config(tmp_path / "config.yaml").loss.sscl_anchor_scale == "none"


def test_jsonl_strings_may_hold_unicode_line_separators(tmp_path: Path) -> None:
    import json

    from sadcl.data.manifest import read_manifest

    _images(tmp_path, 1)
    name = "im/0.png"
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"image": name, "labels": ["a\u2028b"], "note": "x\u0085y"}, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    ds = read_manifest(tmp_path / "m.jsonl")
    assert ds.class_names == ["a\u2028b"] and len(ds) == 1


def test_torch_writer_failure_is_reported_as_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from sadcl.checkpoint import save_checkpoint

    def enforce(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing file "
            "data/0: file write failed"
        )

    monkeypatch.setattr(torch, "save", enforce)
    with pytest.raises(OSError, match=r"could not write .*x\.pt: no space left on device \(previous file kept\)"):
        save_checkpoint({"x": 1}, tmp_path / "x.pt")
    assert list(tmp_path.iterdir()) == []


def test_a_broken_pipe_that_is_not_stdout_is_an_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import argparse

    from sadcl import cli

    def boom(args: argparse.Namespace) -> int:
        raise BrokenPipeError(32, "Broken pipe (a worker's pipe)")

    def parser() -> argparse.ArgumentParser:
        ap = argparse.ArgumentParser()
        ap.add_argument("-v", "--verbose", action="store_true")
        ap.add_subparsers(dest="command").add_parser("job").set_defaults(run=boom)
        return ap

    monkeypatch.setattr(cli, "build_parser", parser)
    assert cli.main(["job"]) == 2
    assert "Broken pipe (a worker's pipe)" in capsys.readouterr().err
