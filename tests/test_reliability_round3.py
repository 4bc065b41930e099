"""Issue #29 (reliability and usability, third round), one test per numbered point, through the CLI where the user
meets it: no lost files, escaped output, enforced limits, one run per directory, overrides as typed, honest counts,
clear messages, and the class count from the data."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sadcl.cli import main
from support.models import TINY_MODEL_OVERRIDES
from support.ship import make_run, noise_image

EVIL = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "a|b", "=cmd|' /C calc'!A0", "+1", "@SUM(A1)"]

TINY = [
    *TINY_MODEL_OVERRIDES,
    "model.img_size=32",
    "model.bank_slots=2",
    "data.batch_size=2",
    "data.eval_batch_size=4",
    "data.workers=0",
    "data.cache_images=false",
    "train.baseline_epochs=1",
    "train.epochs=1",
    "train.progress=false",
    "train.tensorboard=false",
    "train.prototype_threshold=0.01",
]


def _checkpoint(root: Path, names: list[str]) -> Path:
    """A RUN/sadcl/best.pt with random weights, ``names`` as its classes, and a results.json naming them."""
    from sadcl.checkpoint import save_checkpoint
    from sadcl.config import Config
    from sadcl.models import build_model

    cfg = Config.from_dict(
        {
            "model": {
                "backbone": "resnet18",
                "pretrained": False,
                "img_size": 32,
                "num_classes": len(names),
                "hidden_dim": 16,
                "nhead": 2,
                "dim_feedforward": 32,
                "contrastive": False,
            },
            "data": {"format": "manifest", "root": str(root / "data"), "workers": 0, "val_split": None},
        }
    )
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    stage = root / "run" / "sadcl"
    stage.mkdir(parents=True)
    ckpt = save_checkpoint(
        {"model": model.state_dict(), "config": cfg.to_dict(), "class_names": names, "stage": "sadcl", "epoch": 0},
        stage / "best.pt",
    )
    results = {"best_epoch": 2, "epochs_run": 3, "test": {"mAP": 50.0}, "test_per_class_AP": dict.fromkeys(names, 50.0)}
    (stage / "results.json").write_text(json.dumps(results))
    return ckpt


# ------------------------------------------------------------------------------------------- 1. export --format dir
def test_1_export_dir_refuses_a_folder_of_user_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt = _checkpoint(tmp_path, ["cat", "dog"])
    out = tmp_path / "mine"
    out.mkdir()
    (out / "README.md").write_text("my notes\n")
    (out / "classes.txt").write_text("my classes\n")
    assert main(["export", str(ckpt), "--format", "dir", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "is not empty and is not a model directory written by sadcl" in err and "--overwrite" in err
    assert (out / "README.md").read_text() == "my notes\n" and (out / "classes.txt").read_text() == "my classes\n"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "classes.txt"]  # nothing written
    # A model directory sadcl wrote is replaced in place; a file the user added there is left alone.
    shipped = tmp_path / "shipped"
    assert main(["export", str(ckpt), "--format", "dir", "--out", str(shipped)]) == 0
    (shipped / "notes.txt").write_text("keep me\n")
    assert main(["export", str(ckpt), "--format", "dir", "--out", str(shipped)]) == 0
    assert (shipped / "notes.txt").read_text() == "keep me\n"
    # --overwrite writes the model files, and only those, into the user's folder.
    (out / "photo.jpg").write_bytes(b"\xff\xd8 not really")
    assert main(["export", str(ckpt), "--format", "dir", "--out", str(out), "--overwrite"]) == 0
    assert (out / "photo.jpg").read_bytes() == b"\xff\xd8 not really"
    assert (out / "classes.txt").read_text() == "cat\ndog\n"


# ----------------------------------------------------------------------------------------- 2. Markdown escaping
def test_2_model_card_escapes_html_and_table_syntax(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path, EVIL)
    out = tmp_path / "shipped"
    assert main(["export", str(ckpt), "--format", "dir", "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert "<script>" not in card and "<img" not in card and "&lt;script&gt;" in card
    rows = [line for line in card.splitlines() if line.startswith("| ") and "0.500 |" in line]
    assert len(rows) == len(EVIL)
    for row in rows:  # every per-class row keeps exactly its three cells: no unescaped | inside a name
        cells = [c for c in __import__("re").split(r"(?<!\\)\|", row)[1:-1]]
        assert len(cells) == 3, row
    assert "| a\\|b | 50.00 | 0.500 |" in card
    markdown = pytest.importorskip("markdown")
    html = markdown.markdown(card, extensions=["tables"])
    assert "<script>" not in html and "<img" not in html
    assert "<td>a|b</td>" in html  # rendered: one cell showing the name as typed


def test_2_escape_helpers() -> None:
    from sadcl.escape import markdown_code, markdown_text

    assert markdown_text("a|b") == "a\\|b"
    assert markdown_text("<b>*x*</b>") == "&lt;b&gt;\\*x\\*&lt;/b&gt;"
    assert markdown_text("two\nlines") == "two lines"
    assert markdown_code("a`b") == "``a`b``" and markdown_code("`x") == "`` `x ``"


# ---------------------------------------------------------------------------------------- 3. CSV formula injection
def test_3_csv_cells_that_start_a_formula_are_neutralised(tmp_path: Path) -> None:
    from sadcl.escape import csv_cell
    from sadcl.report.build import per_class_csv

    assert [csv_cell(x) for x in ("=1+1", "+1", "-1", "@A1", "\tx", "cat", 1.5)] == [
        "'=1+1",
        "'+1",
        "'-1",
        "'@A1",
        "'\tx",
        "cat",
        1.5,
    ]
    data = {"models": [{"per_class": [{"class": "=HYPERLINK(1)", "AP": 50.0}, {"class": "-x", "AP": -1.5}]}]}
    rows = list(csv.reader(io.StringIO(per_class_csv(data))))
    assert rows[1] == ["'=HYPERLINK(1)", "50"] and rows[2] == ["'-x", "-1.5"]  # numbers are left as numbers


def test_3_predict_csv_and_report_csv_through_the_cli(tmp_path: Path) -> None:
    names = ["=cmd", "+one", "@sum", "cat"]
    data = tmp_path / "data"
    (data).mkdir()
    (data / "classes.txt").write_text("\n".join(names) + "\n")
    rows = ["image,labels"]
    for i in range(4):
        noise_image(data / f"i{i}.png", seed=i)
        rows.append(f"i{i}.png,{names[i]} cat")
    (data / "test.csv").write_text("\n".join(rows) + "\n")
    ckpt = _checkpoint(tmp_path, names)
    out = tmp_path / "pred.csv"
    assert main(["predict", str(ckpt), str(data / "i0.png"), "--threshold", "0", "--out", str(out)]) == 0
    labels = {r["label"] for r in csv.DictReader(open(out))}
    assert labels == {"'=cmd", "'+one", "'@sum", "cat"}
    report = tmp_path / "report"
    argv = ["report", str(ckpt), "--split", "test", "--out", str(report), "--val-split", "none", "--examples", "0"]
    assert main(argv) == 0
    classes = [r["class"] for r in csv.DictReader(open(report / "per_class.csv"))]
    assert sorted(classes) == sorted(["'=cmd", "'+one", "'@sum", "cat"])


# ------------------------------------------------------------------------------------- 4. per-image limit (JSON API)
def test_4_api_enforces_the_per_image_limit_before_decoding(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("multipart")
    from fastapi.testclient import TestClient

    from sadcl.inference.serve import create_app

    env = make_run(tmp_path)
    app = create_app(env["ckpt"], max_upload_bytes=100_000, examples=False)
    client = TestClient(app)
    rng = np.random.default_rng(0)
    big = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(big, "PNG")  # a valid 270 kB PNG
    assert len(big.getvalue()) > 100_000
    small = (tmp_path / "images" / "p0.png").read_bytes()
    res = client.post("/api/v1/predict", files=[("images", ("ok.png", small)), ("images", ("big.png", big.getvalue()))])
    assert res.status_code == 413, res.text
    assert "big.png" in res.json()["detail"] and "per image" in res.json()["detail"]
    junk = rng.integers(0, 256, 300_000, dtype=np.uint8).tobytes()  # not an image, and too large: size comes first
    res = client.post("/api/v1/predict", files=[("images", ("junk.bin", junk))])
    assert res.status_code == 413, res.text
    res = client.post("/api/v1/predict", files=[("images", ("junk.bin", junk[:5000]))])
    assert res.status_code == 415, res.text
    assert client.post("/api/v1/predict", files=[("images", ("ok.png", small))]).status_code == 200
    assert client.get("/api/v1/info").json()["limits"]["max_image_bytes"] == 100_000


# -------------------------------------------------------------------------------------- 5. one run per directory
def test_5_a_second_train_into_a_held_directory_fails_at_once(tmp_path: Path, capsys) -> None:
    from sadcl.io import file_lock

    out = tmp_path / "run"
    out.mkdir()
    with file_lock(out / ".sadcl-train.lock"):  # what a running `sadcl train` holds
        code = main(["train", "--output-dir", str(out), "data.format=manifest", f"data.root={tmp_path}", *TINY])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is in use: another `sadcl train` run holds its lock" in err[0]
    assert "Traceback" not in "".join(err)
    assert sorted(p.name for p in out.iterdir()) == [".sadcl-train.lock"]  # nothing of the running run touched


def _dataset(root: Path, classes: list[str] | None, rows: dict[str, list[tuple[str, str]]], sep: str = ",") -> Path:
    """A manifest dataset: ``rows[split] = [(image name, labels field)]``, images made up (48x40 noise PNGs)."""
    root.mkdir(parents=True, exist_ok=True)
    if classes is not None:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
    for split, items in rows.items():
        lines = [f"image{sep}labels"]
        for k, (name, labels) in enumerate(items):
            if not (root / name).exists() and name.endswith(".png"):
                noise_image(root / name, seed=hash((split, k)) % 1000, size=(48, 40))
            lines.append(f"{name}{sep}{labels}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def _train(root: Path, out: Path, *extra: str) -> int:
    return main(["train", "--output-dir", str(out), "data.format=manifest", f"data.root={root}", *TINY, *extra])


# --------------------------------------------------------------------------- 6. override values reach the option
@pytest.mark.parametrize("sep", ["#", "|", "&", "*", "!"])
def test_6_label_sep_override_is_taken_as_typed(tmp_path: Path, capsys, sep: str) -> None:
    assert main(["train", "--print-config", "data.format=manifest", f"data.options.label_sep={sep}"]) == 0
    printed = capsys.readouterr().out
    import yaml

    assert yaml.safe_load(printed)["data"]["options"]["label_sep"] == sep
    from sadcl.config import load_config
    from sadcl.data import build_dataset

    root = _dataset(tmp_path / "d", None, {"train": [("a.png", f"cat{sep}dog"), ("b.png", "dog")]})
    cfg = load_config(None, ["data.format=manifest", f"data.root={root}", f"data.options.label_sep={sep}"])
    assert build_dataset(cfg.data, "train").class_names == ["cat", "dog"]


def test_6_delimiter_override_and_a_broken_structured_value(tmp_path: Path, capsys) -> None:
    from sadcl.config import ConfigError, load_config
    from sadcl.data import build_dataset

    root = _dataset(tmp_path / "d", None, {"train": [("a.png", "cat dog"), ("b.png", "dog")]}, sep="|")
    cfg = load_config(None, ["data.format=manifest", f"data.root={root}", "data.options.delimiter=|"])
    assert cfg.data.options["delimiter"] == "|" and build_dataset(cfg.data, "train").class_names == ["cat", "dog"]
    assert load_config(None, ["data.options.label_sep='#'"]).data.options["label_sep"] == "#"  # quoted: YAML
    assert load_config(None, ["optim.betas=[0.9, 0.99]"]).optim.betas == (0.9, 0.99)  # structured: YAML
    with pytest.raises(ConfigError, match=r"quote a literal string"):
        load_config(None, ["data.options.label_sep=[oops"])
    assert main(["train", "--print-config", "data.options.label_sep=[oops"]) == 2
    assert "quote a literal string" in capsys.readouterr().err


# ------------------------------------------------------------------------ 7, 8, 15, 16: one tiny run, end to end
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`sadcl train` as a user runs it (a subprocess, stderr to a file: not a terminal) on a 12-image manifest
    dataset with data.batch_size=64 and no model.num_classes."""
    import os
    import subprocess
    import sys

    tmp = tmp_path_factory.mktemp("tiny_run")
    names = ["cat", "dog", "sky"]
    split = {
        s: [(f"{s}{i}.png", " ".join(names[j] for j in range(3) if (i + j) % 2 == 0) or "sky") for i in range(n)]
        for s, n in (("train", 12), ("val", 4), ("test", 4))
    }
    root = _dataset(tmp / "data", names, split)
    out = tmp / "run"
    tiny = [o for o in TINY if not o.startswith(("data.batch_size", "train.progress"))]
    argv = ["train", "--output-dir", str(out), "data.format=manifest", f"data.root={root}", *tiny]
    argv += ["data.batch_size=64", "train.val_interval=1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parent)}
    with open(tmp / "stderr.txt", "w") as err:
        proc = subprocess.run(
            [sys.executable, "-m", "sadcl", *argv], stdout=subprocess.PIPE, stderr=err, text=True, env=env
        )
    return {"rc": proc.returncode, "stdout": proc.stdout, "stderr": (tmp / "stderr.txt").read_text(), "out": out}


# ---------------------------------------------------------------------------------- 7. a batch larger than the split
@pytest.mark.slow
def test_7_a_batch_larger_than_the_split_counts_what_was_trained(tiny_run) -> None:
    assert tiny_run["rc"] == 0, tiny_run["stderr"][-3000:]
    assert tiny_run["stderr"].count("data.batch_size=64 is larger than the 'train' split (12 images)") == 1
    for stage in ("baseline", "sadcl"):
        history = json.loads((tiny_run["out"] / stage / "metrics.json").read_text())
        assert [row["train_images"] for row in history] == [12], stage  # one epoch of the 12 images, not 64


# ------------------------------------------------------------------------------------- 8. one epoch numbering
@pytest.mark.slow
def test_8_every_message_numbers_epochs_from_1(tiny_run, tmp_path: Path) -> None:
    assert tiny_run["rc"] == 0
    results = json.loads((tiny_run["out"] / "baseline" / "results.json").read_text())
    assert results["best_epoch"] == 0  # files keep the 0-based index
    assert "baseline epoch 1/1" in tiny_run["stderr"] and "epoch 0" not in tiny_run["stderr"]
    table = [line.split() for line in tiny_run["stdout"].splitlines() if line.startswith(("baseline ", "sadcl "))]
    assert table and all(row[2] in ("1", "start") for row in table)  # the results table: as the log
    shipped = tmp_path / "shipped"
    assert (
        main(["export", str(tiny_run["out"] / "baseline" / "best.pt"), "--format", "dir", "--out", str(shipped)]) == 0
    )
    assert "best epoch 1)" in (shipped / "README.md").read_text()


def test_8_epoch_labels() -> None:
    from sadcl.cli.train import print_results
    from sadcl.training.stage_log import epoch_label

    assert [epoch_label(e) for e in (0, 2, -1, None)] == ["1", "3", "start", "-"]
    buf = io.StringIO()
    from contextlib import redirect_stdout

    with redirect_stdout(buf):
        print_results(
            {"baseline": {"best_epoch": 2, "selected": "ema"}, "sadcl": {"best_epoch": -1}}, ["baseline", "sadcl"]
        )
    rows = [line.split() for line in buf.getvalue().splitlines() if line.startswith(("baseline", "sadcl "))]
    assert rows[0][:3] == ["baseline", "ema", "3"] and rows[1][2] == "start"


# ------------------------------------------------------------------------------------ 9. read-only SADCL_CACHE
def test_9_a_read_only_cache_names_itself_and_sadcl_cache(tmp_path: Path, monkeypatch, capsys) -> None:
    import errno
    import os

    cache = tmp_path / "cache"
    monkeypatch.setenv("SADCL_CACHE", str(cache))
    real_mkdir = os.mkdir

    def read_only(path, *args, **kwargs):  # the cache sits on a read-only file system
        if str(path).startswith(str(cache)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", read_only)
    assert main(["train", "--output-dir", str(tmp_path / "run"), "data.options.n_train=8", *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"the sadcl cache {cache} is not writable (Read-only file system" in err
    assert "SADCL_CACHE" in err and "[Errno" not in err


# -------------------------------------------------------------------------------- 10. a malicious pickle checkpoint
def test_10_a_pickle_with_code_is_not_a_checkpoint_and_nothing_runs(tmp_path: Path, capsys) -> None:
    import os

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "model.pt"
    torch.save({"model": Evil(), "config": {}}, evil)
    assert main(["evaluate", str(evil)]) == 2
    err = capsys.readouterr().err
    assert "holds Python objects that safe loading refuses" in err and "not a sadcl checkpoint" in err
    assert "delete" not in err and "damaged" not in err and "weights_only=False" not in err
    assert not marker.exists()
    assert evil.exists()


# ------------------------------------------------------------------------------- 11. an unknown timm backbone
def test_11_an_unknown_backbone_names_the_setting_and_close_names(tmp_path: Path, capsys) -> None:
    root = _dataset(
        tmp_path / "d", ["cat", "dog"], {s: [("a.png", "cat"), ("b.png", "dog")] for s in ("train", "val", "test")}
    )
    assert _train(root, tmp_path / "run", "model.backbone=resnet9000") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "model.backbone='resnet9000' is not a timm model; close names:" in err and "resnet50" in err


# ------------------------------------------------------------------------ 12. a non-raster file listed in a CSV
@pytest.mark.parametrize("cache", ["true", "false"])
def test_12_an_svg_in_a_csv_names_the_file_and_the_line(tmp_path: Path, capsys, cache: str) -> None:
    root = _dataset(tmp_path / "d", ["cat", "dog"], {s: [("a.png", "cat"), ("b.png", "dog")] for s in ("val", "test")})
    (root / "logo.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"><circle r="4"/></svg>')
    _dataset(root, None, {"train": [("a.png", "cat"), ("b.png", "dog"), ("logo.svg", "cat dog")]})
    assert _train(root, tmp_path / "run", f"data.cache_images={cache}") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{root / 'train.csv'}: line 4: {root / 'logo.svg'}: a SVG file is a vector" in err, err
    assert "convert it to PNG or JPEG" in err


# ----------------------------------------------------------------------- 13. a class name with a space
def test_13_a_class_name_with_a_space_hints_at_label_sep(tmp_path: Path, capsys) -> None:
    root = _dataset(
        tmp_path / "d",
        ["ice cream", "cake"],
        {s: [("a.png", "ice cream"), ("b.png", "cake")] for s in ("train", "val", "test")},
    )
    assert _train(root, tmp_path / "run") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "unknown class name(s) ['cream', 'ice']" in err
    assert "names containing a space (e.g. 'ice cream')" in err and "data.options.label_sep=';'" in err


# ---------------------------------------------------------------------------------- 14. very large images
def test_14_large_images_log_once_per_file_and_the_limit_is_a_setting(tmp_path: Path, capsys) -> None:
    import logging
    import warnings

    from sadcl.config import load_config
    from sadcl.data import build_dataset
    from sadcl.data.images import PILLOW_MAX_IMAGE_PIXELS, set_max_image_pixels

    root = _dataset(tmp_path / "d", ["cat", "dog"], {"train": [("a.png", "cat"), ("b.png", "dog")]})
    Image.new("RGB", (60, 50)).save(root / "big.png")  # 3 000 pixels: above a 2 000 limit, below twice it
    Image.new("RGB", (80, 60)).save(root / "bomb.png")  # 4 800 pixels: above twice the limit
    _dataset(root, None, {"train": [("a.png", "cat"), ("big.png", "dog"), ("bomb.png", "cat")]})
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("sadcl.data.images").addHandler(handler)
    try:
        cfg = load_config(None, ["data.format=manifest", f"data.root={root}", "data.max_image_pixels=2000"])
        ds = build_dataset(cfg.data, "train")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                assert ds[1][0].size == (60, 50)
            with pytest.raises(
                Exception,
                match=r"line 4: .*bomb\.png: the image has 0 megapixels, more than twice "
                r"data\.max_image_pixels=2000",
            ):
                ds[2]
        assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
        large = [r for r in records if "very large image" in r.getMessage()]
        assert len(large) == 1 and "big.png" in large[0].getMessage()
    finally:
        logging.getLogger("sadcl.data.images").removeHandler(handler)
        set_max_image_pixels(PILLOW_MAX_IMAGE_PIXELS)
    assert load_config(None).data.max_image_pixels == PILLOW_MAX_IMAGE_PIXELS == 89_478_485
    assert main(["train", "--print-config", "data.max_image_pixels=0"]) == 2
    assert "data.max_image_pixels must be >= 1 or null" in capsys.readouterr().err


# ---------------------------------------------------------------------- 15. the class count comes from the data
@pytest.mark.slow
def test_15_num_classes_from_the_data(tiny_run) -> None:
    assert tiny_run["rc"] == 0
    from sadcl.checkpoint import load_checkpoint

    state = load_checkpoint(tiny_run["out"] / "sadcl" / "best.pt")
    assert state["config"]["model"]["num_classes"] == 3 and state["class_names"] == ["cat", "dog", "sky"]
    assert "model.num_classes=3: the classes of the 'train' split" in tiny_run["stderr"]


def test_15_print_config_and_an_explicit_value_as_a_check(tmp_path: Path, capsys) -> None:
    import yaml

    from sadcl.cli.train import default_config_path

    root = _dataset(
        tmp_path / "d", ["cat", "dog"], {s: [("a.png", "cat"), ("b.png", "dog")] for s in ("train", "val", "test")}
    )
    argv = ["train", "--print-config", "--config", default_config_path(), "data.format=manifest", f"data.root={root}"]
    assert main(argv) == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"]["num_classes"] == 2  # the demo's 30 is MOM-30's
    assert main([*argv, "model.num_classes=5"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"]["num_classes"] == 5
    assert _train(root, tmp_path / "run", "model.num_classes=5") == 2
    assert "model.num_classes=5, but the manifest dataset has 2 classes" in capsys.readouterr().err
    assert main(["train", "--print-config"]) == 0  # the demo config keeps its explicit 30
    assert yaml.safe_load(capsys.readouterr().out)["model"]["num_classes"] == 30


# ------------------------------------------------------------------------------- 16. logs that read well in a file
@pytest.mark.slow
def test_16_training_progress_in_a_file_is_lines_not_carriage_returns(tiny_run) -> None:
    assert tiny_run["rc"] == 0
    assert "\r" not in tiny_run["stderr"]
    epoch_lines = [line for line in tiny_run["stderr"].splitlines() if " epoch 1/1: loss" in line]
    assert len(epoch_lines) == 2  # one line per epoch and stage


def test_16_line_progress_logs_quarters_of_a_long_loop(monkeypatch) -> None:
    import logging

    from sadcl import progress

    records: list[str] = []
    monkeypatch.setattr(progress.logger, "info", lambda msg, *a: records.append(msg % a))
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: False)
    assert list(progress.progress_bar(range(100), desc="epoch 3")) == list(range(100))
    assert records == ["epoch 3: 25% (25/100 it)", "epoch 3: 50% (50/100 it)", "epoch 3: 75% (75/100 it)"]
    records.clear()
    list(progress.progress_bar(range(5), desc="short"))
    assert records == []
    assert logging.getLogger("sadcl.progress") is progress.logger


# ------------------------------------------------------------------------------------- 17. Hugging Face datasets
def _png_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def hf_disk(tmp_path: Path, monkeypatch) -> Path:
    """A DatasetDict saved to disk: an Image column (bytes) and a Sequence(ClassLabel) of cat/dog/sky."""
    datasets = pytest.importorskip("datasets", reason="data.format=hf needs the optional datasets package")
    monkeypatch.setenv("SADCL_CACHE", str(tmp_path / "cache"))
    features = datasets.Features(
        {"image": datasets.Image(), "labels": datasets.Sequence(datasets.ClassLabel(names=["cat", "dog", "sky"]))}
    )
    labels = [[0], [1, 2], [0, 2], [1]]
    splits = {
        name: datasets.Dataset.from_dict(
            {"image": [{"bytes": _png_bytes(i), "path": None} for i in range(4)], "labels": labels}, features=features
        )
        for name in ("train", "validation", "test")
    }
    root = tmp_path / "hf_disk"
    datasets.DatasetDict(splits).save_to_disk(str(root))
    return root


def test_17_hf_save_to_disk_through_the_cli(hf_disk: Path, tmp_path: Path, capsys) -> None:
    import yaml

    from sadcl.config import load_config
    from sadcl.data import build_dataset

    assert main(["train", "--print-config", "data.format=hf", f"data.root={hf_disk}"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"]["num_classes"] == 3  # from the ClassLabel feature
    cfg = load_config(None, ["data.format=hf", f"data.root={hf_disk}"])
    train = build_dataset(cfg.data, "train")
    assert train.class_names == ["cat", "dog", "sky"]
    assert train.targets.tolist() == [[1, 0, 0], [0, 1, 1], [1, 0, 1], [0, 1, 0]]
    assert all(Path(p).is_file() and str(tmp_path / "cache" / "hf") in p for p in train.paths)
    assert np.asarray(train[1][0]).shape == (30, 40, 3)
    val = build_dataset(cfg.data, "val", class_names=train.class_names)  # 'validation' serves val
    assert len(val) == 4 and train.where(2) == f"{hf_disk} [train]: row 2"
    # Evaluate a checkpoint trained on it: the CLI reads the test split.
    ckpt = _checkpoint(tmp_path / "ck", ["cat", "dog", "sky"])
    state = torch.load(ckpt, weights_only=True)
    state["config"]["data"] = {**state["config"]["data"], "format": "hf", "root": str(hf_disk)}
    torch.save(state, ckpt)
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(ckpt), "--split", "test", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["num_images"] == 4


def test_17_hf_parquet_names_paths_partial_labels_and_bad_rows(tmp_path: Path, monkeypatch, capsys) -> None:
    pytest.importorskip("datasets", reason="data.format=hf needs the optional datasets package")
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sadcl.config import load_config
    from sadcl.data import build_dataset
    from sadcl.data.images import DataError

    monkeypatch.setenv("SADCL_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "pq"
    for i in range(4):
        noise_image(root / "img" / f"{i}.png", seed=i)
    table = {
        "image": [f"img/{i}.png" for i in range(4)],
        "labels": [["cat"], ["dog", "?sky"], ["sky"], ["cat", "dog"]],
        "negatives": [None, None, ["cat"], None],
    }
    pq.write_table(pa.table(table), root / "train.parquet")
    pq.write_table(pa.table({**table, "labels": [["cat"], ["eel"], None, ["dog"]]}), root / "test.parquet")
    pq.write_table(pa.table({**table, "labels": [["cat"], ["eel"], ["sky"], ["dog"]]}), root / "val.parquet")
    cfg = load_config(None, ["data.format=hf", f"data.root={root}"])
    train = build_dataset(cfg.data, "train")
    assert train.class_names == ["cat", "dog", "sky"]  # sorted names found, as the manifest reader
    assert train.paths[0] == str(root / "img" / "0.png")
    assert train.ignore is not None and train.ignore[1].tolist() == [False, False, True]
    assert train.targets[2].tolist() == [0, 0, 1]
    with pytest.raises(DataError, match=r"val\.parquet: row 1: unknown class name\(s\) \['eel'\]"):
        build_dataset(cfg.data, "val", class_names=train.class_names)
    with pytest.raises(DataError, match=r"test\.parquet: row 2: column 'labels': no labels"):
        build_dataset(cfg.data, "test", class_names=train.class_names)
    skipped = build_dataset(
        load_config(None, ["data.format=hf", f"data.root={root}", "data.skip_bad=true"]).data,
        "test",
        class_names=train.class_names,
    )
    assert len(skipped) == 2  # rows 1 (unknown class) and 2 (no labels) skipped
    assert _train(root, tmp_path / "run", "data.format=hf") == 2
    assert "val.parquet: row 1: unknown class name(s) ['eel']" in capsys.readouterr().err


def test_17_hf_without_datasets_says_what_to_install(tmp_path: Path, monkeypatch) -> None:
    import sys

    from sadcl.config import load_config
    from sadcl.data import build_dataset
    from sadcl.data.images import DataError

    monkeypatch.setitem(sys.modules, "datasets", None)  # as if it were not installed
    (tmp_path / "train.parquet").write_bytes(b"")
    with pytest.raises(DataError, match=r"pip install 'sadcl\[hf\]'"):
        build_dataset(load_config(None, ["data.format=hf", f"data.root={tmp_path}"]).data, "train")
