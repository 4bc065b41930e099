"""Model directory: round trip (same logits as the checkpoint), no pickle on the load path, the tools accept it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sadcl import load_model, open_model
from sadcl.cli import main
from sadcl.inference.thresholds import save_thresholds
from sadcl.ship.model_dir import export_model_dir, is_model_dir, read_model_dir
from support.ship import NAMES, make_run

pytest.importorskip("safetensors")

TUNED = [0.2, 0.58, 0.25, 0.7]  # around the tiny model's scores, so 0.5 would select differently


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    env = make_run(tmp_path_factory.mktemp("model_dir"))
    thr = env["root"] / "thresholds.json"
    save_thresholds(thr, TUNED, NAMES)
    env["dir"] = export_model_dir(open_model(env["ckpt"], thresholds=thr), env["root"] / "shipped")
    return env


@pytest.fixture
def no_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load called: loading a model directory must not unpickle")

    monkeypatch.setattr(torch, "load", refuse)


def test_layout_and_files(run) -> None:
    d = run["dir"]
    assert sorted(p.name for p in d.iterdir()) == sorted(
        ["model.safetensors", "config.json", "classes.txt", "thresholds.json", "README.md"]
    )
    assert is_model_dir(d) and not is_model_dir(run["ckpt"]) and not is_model_dir(run["root"])
    assert (d / "classes.txt").read_text().splitlines() == NAMES
    doc = json.loads((d / "config.json").read_text())
    assert doc["format"] == "sadcl-model" and doc["num_classes"] == 4
    assert doc["preprocessing"]["img_size"] == [64, 64] and len(doc["preprocessing"]["mean"]) == 3
    assert doc["postprocessing"]["activation"] == "sigmoid"
    assert "model" not in doc["training"] and doc["training"]["data"]["format"] == "manifest"
    assert json.loads((d / "thresholds.json").read_text()) == dict(zip(NAMES, TUNED))
    card = (d / "README.md").read_text()
    assert "58.75" in card and "61.50" in card  # test and val mAP of the run's results.json
    assert "| dog | 55.50 | 0.580 |" in card  # per-class AP next to the shipped threshold
    assert "sigmoid(logits) > threshold" in card


def test_round_trip_same_logits_without_pickle(run, monkeypatch) -> None:
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ref_model, _, _ = load_model(run["ckpt"])  # the checkpoint, with the real (weights_only) torch.load
    with torch.inference_mode():
        ref = ref_model(x)["logits"]

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load called: loading a model directory must not unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    shipped, cfg, names = load_model(run["dir"])
    assert names == NAMES and cfg.model.num_classes == 4 and not shipped.training
    with torch.inference_mode():
        got = shipped(x)["logits"]
    assert got.shape == (3, 4)
    diff = float((got - ref).abs().max())
    print(f"model directory vs checkpoint: max abs logit diff {diff:.3g}")
    assert diff == 0.0


def test_bad_directories(run, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("model.safetensors", "classes.txt", "thresholds.json"):
        (broken / name).write_bytes((run["dir"] / name).read_bytes())
    doc = json.loads((run["dir"] / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**doc, "format_version": 99}))
    with pytest.raises(ValueError, match="config.json: format_version 99"):
        read_model_dir(broken)
    (broken / "config.json").write_text(json.dumps({**doc, "preprocessing": {**doc["preprocessing"], "std": [1]}}))
    with pytest.raises(ValueError, match="preprocessing.std must be 3 numbers"):
        read_model_dir(broken)
    (broken / "config.json").write_text(json.dumps(doc))
    (broken / "classes.txt").write_text("cat\ndog\n")
    with pytest.raises(ValueError, match="classes.txt: 2 class names, but config.json model.num_classes is 4"):
        read_model_dir(broken)
    (broken / "classes.txt").write_text("\n".join(NAMES))
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="model.safetensors: not a readable safetensors file"):
        load_model(broken)


def test_predict_cli_uses_shipped_thresholds(run, tmp_path, capsys, no_pickle) -> None:
    out = tmp_path / "pred.json"
    assert main(["predict", str(run["dir"]), str(run["images"]), "--all-scores", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert len(results) == 3
    differs = False
    for r in results:
        expected = [n for n, t in zip(NAMES, TUNED) if r["scores"][n] > t]
        assert sorted(lab["label"] for lab in r["labels"]) == sorted(expected)
        differs |= expected != [n for n in NAMES if r["scores"][n] > 0.5]
    assert differs, "the shipped thresholds must matter for these images"
    # An explicit --threshold replaces the shipped ones.
    assert main(["predict", str(run["dir"]), str(run["images"]), "--threshold", "0", "--out", str(out)]) == 0
    assert all(len(r["labels"]) == 4 for r in json.loads(out.read_text()))


def test_predict_dir_equals_checkpoint(run, tmp_path) -> None:
    from sadcl.inference.predict import Predictor

    paths = sorted(str(p) for p in run["images"].iterdir())
    a = Predictor.from_path(run["dir"])
    b = Predictor.from_path(run["ckpt"])
    pa = [r["scores"] for r in a.predict_images(paths, all_scores=True)]
    pb = [r["scores"] for r in b.predict_images(paths, all_scores=True)]
    diff = max(abs(x[n] - y[n]) for x, y in zip(pa, pb) for n in NAMES)
    print(f"predict: model directory vs checkpoint, max abs probability diff {diff:.3g}")
    assert diff <= 1e-6
    np.testing.assert_array_equal(a.thresholds, TUNED)
    np.testing.assert_array_equal(b.thresholds, [0.5] * 4)


@pytest.mark.slow
def test_evaluate_cli_accepts_dir(run, tmp_path, no_pickle) -> None:
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(run["dir"]), "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["num_images"] == 5 and report["threshold"].endswith("thresholds.json")
    assert set(report["per_class_AP"]) == set(NAMES)


def test_serve_accepts_dir(run, no_pickle) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from sadcl.inference.serve import create_app

    client = TestClient(create_app(run["dir"], examples=False))
    info = client.get("/api/v1/info").json()
    assert info["classes"] == NAMES and list(info["thresholds"].values()) == TUNED
    files = [("images", (p.name, p.read_bytes(), "image/png")) for p in sorted(run["images"].iterdir())]
    res = client.post("/api/v1/predict", files=files)
    assert res.status_code == 200, res.text
    assert [r["filename"] for r in res.json()["results"]] == ["p0.png", "p1.png", "p2.png"]
