"""One entry to a trained model: every command opens it with ``open_model``, so all of them use the same operating
thresholds (a thresholds file > --threshold > the model's shipped thresholds > 0.5), and serve's probabilities are
predict's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sadcl import open_model
from sadcl.cli import main
from sadcl.inference.open import operating_thresholds
from sadcl.inference.thresholds import save_thresholds
from sadcl.metrics import summarize
from sadcl.ship.model_dir import export_model_dir
from support.ship import LABELS, NAMES, make_run

pytest.importorskip("safetensors")

SHIPPED = [0.2, 0.58, 0.25, 0.7]  # a model directory's thresholds.json
FILE = [0.3, 0.45, 0.6, 0.35]  # a thresholds file given to every command
CASES = ("model_dir", "checkpoint_and_file")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    env = make_run(tmp_path_factory.mktemp("open_model"))
    root = env["root"]
    save_thresholds(root / "shipped.json", SHIPPED, NAMES)
    save_thresholds(root / "file.json", FILE, NAMES)
    env["dir"] = export_model_dir(open_model(env["ckpt"], thresholds=root / "shipped.json"), root / "dir")
    return env


def _case(env: dict[str, Path], case: str) -> tuple[Path, list[str], list[float]]:
    """(model path, the threshold options every command gets, the thresholds they must all use)."""
    if case == "model_dir":
        return env["dir"], [], SHIPPED
    return env["ckpt"], ["--thresholds", str(env["root"] / "file.json")], FILE


def test_precedence_file_then_threshold_then_shipped_then_default(tmp_path) -> None:
    save_thresholds(tmp_path / "t.json", FILE, NAMES)
    shipped = np.array(SHIPPED)
    rule = {
        "file": operating_thresholds(NAMES, thresholds=tmp_path / "t.json", threshold=0.9, shipped=shipped),
        "threshold": operating_thresholds(NAMES, threshold=0.9, shipped=shipped),
        "model": operating_thresholds(NAMES, shipped=shipped),
        "default": operating_thresholds(NAMES),
    }
    assert {k: v[1] for k, v in rule.items()} == {k: k for k in rule}
    np.testing.assert_array_equal(rule["file"][0], FILE)
    np.testing.assert_array_equal(rule["threshold"][0], [0.9] * 4)
    np.testing.assert_array_equal(rule["model"][0], SHIPPED)
    np.testing.assert_array_equal(rule["default"][0], [0.5] * 4)
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\]"):
        operating_thresholds(NAMES, threshold=1.5)


@pytest.mark.parametrize("case", CASES)
def test_open_model(env, case) -> None:
    path, _, expected = _case(env, case)
    trained = open_model(path, thresholds=env["root"] / "file.json" if case != "model_dir" else None)
    assert trained.kind == case.split("_and_")[0] and trained.class_names == NAMES
    np.testing.assert_array_equal(trained.thresholds, expected)
    assert trained.threshold_source == ("model" if case == "model_dir" else "file")
    np.testing.assert_array_equal(open_model(path, threshold=0.1).thresholds, [0.1] * 4)  # --threshold beats shipped
    assert open_model(env["ckpt"]).threshold_source == "default"


@pytest.mark.parametrize("case", CASES)
def test_every_command_uses_the_same_thresholds(env, case, tmp_path, monkeypatch, capsys) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("multipart")
    from fastapi.testclient import TestClient

    import sadcl.inference.attention as attention
    from sadcl.inference.serve import create_app

    path, options, expected = _case(env, case)
    data = env["data"]
    images = sorted(data.glob("e*.png"))

    # predict: labels above the thresholds, and every class's probability.
    out = tmp_path / "pred.json"
    args = ["predict", str(path), *map(str, images), "--all-scores", "--device", "cpu", "--out", str(out)]
    assert main([*args, *options]) == 0
    predicted = json.loads(out.read_text())
    probs = np.array([[r["scores"][n] for n in NAMES] for r in predicted])
    for r, p in zip(predicted, probs):
        assert sorted(lab["label"] for lab in r["labels"]) == sorted(n for n, s, t in zip(NAMES, p, expected) if s > t)

    # evaluate: its threshold metrics on the test split (these images) are those of predict's scores at them.
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(path), "--device", "cpu", "--out", str(out), *options]) == 0
    report = json.loads(out.read_text())
    targets = np.array([[float(n in LABELS[im.name].split()) for n in NAMES] for im in images])
    want = summarize(probs, targets, None, np.array(expected))
    for key in ("CP", "CR", "CF1", "OP", "OR", "OF1"):
        assert report["metrics"][key] == pytest.approx(want[key], abs=1e-3), key

    # visualize: the labels shown are those above the same thresholds.
    seen = []
    real = attention.label_attention
    monkeypatch.setattr(attention, "label_attention", lambda *a, **k: seen.append(k["threshold"]) or real(*a, **k))
    png = tmp_path / "att.png"
    args = ["visualize", "attention", str(path), str(images[0]), "--out", str(png), "--size", "64"]
    assert main([*args, *options]) == 0 and png.is_file()
    np.testing.assert_array_equal(seen[0], expected)

    # serve: the API reports the same thresholds, and its probabilities are predict's (the Predictor's forward).
    thresholds_file = options[1] if options else None
    client = TestClient(create_app(path, thresholds=thresholds_file, examples=False))
    assert list(client.get("/api/v1/info").json()["thresholds"].values()) == expected
    files = [("images", (im.name, im.read_bytes(), "image/png")) for im in images]
    res = client.post("/api/v1/predict", files=files, params={"all_scores": "true"})
    assert res.status_code == 200, res.text
    served = np.array([[r["scores"][n] for n in NAMES] for r in res.json()["results"]])
    np.testing.assert_allclose(served, probs, rtol=0, atol=1e-6)

    # export: a model directory ships the same thresholds.
    out_dir = tmp_path / "exported"
    assert main(["export", str(path), "--format", "dir", "--out", str(out_dir), *options]) == 0
    assert list(json.loads((out_dir / "thresholds.json").read_text()).values()) == expected
    capsys.readouterr()


@pytest.mark.slow
def test_onnx_export_carries_the_same_thresholds(env, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = tmp_path / "model.onnx"
    assert main(["export", str(env["dir"]), "--out", str(out), "--no-check"]) == 0
    trained = open_model(out)
    assert trained.kind == "onnx" and trained.threshold_source == "model" and trained.class_names == NAMES
    np.testing.assert_allclose(trained.thresholds, SHIPPED)
    with pytest.raises(ValueError, match="needs a checkpoint or a model directory, not an ONNX file"):
        trained.torch_model("sadcl evaluate")
