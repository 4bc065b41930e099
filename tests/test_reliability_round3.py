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

    from sadcl.serve import create_app

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
