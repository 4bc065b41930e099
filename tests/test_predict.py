"""Prediction (torch and onnxruntime engines), input expansion, writers, and the predict / evaluate CLIs."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sadcl.checkpoint import save_checkpoint
from sadcl.cli import main
from sadcl.config import Config
from sadcl.data import ImageLoadError
from sadcl.data.transforms import build_eval_transform
from sadcl.inference.open import load_model
from sadcl.inference.predict import Predictor, expand_inputs, write_csv, write_json
from sadcl.inference.thresholds import save_thresholds
from sadcl.metrics import summarize
from support.models import tiny_model_config

pytest.importorskip("timm")

NAMES = ["cat", "dog", "sky", "sea"]
# Labels of the evaluation images (manifest rows); every class has a positive and a negative.
LABELS = {
    "e0.png": "cat dog",
    "e1.png": "sky",
    "e2.png": "sea cat",
    "e3.png": "dog",
    "e4.png": "sky sea",
    "e5.png": "cat",
}


def _noise_image(path: Path, seed: int, size: tuple[int, int] = (40, 30)) -> Path:
    """A random RGB image, so every image gets different scores."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("predict")
    data = root / "data"
    for i, name in enumerate(LABELS):
        _noise_image(data / name, seed=100 + i)
    (data / "classes.txt").write_text("\n".join(NAMES) + "\n")
    (data / "test.csv").write_text("image,labels\n" + "".join(f"{k},{v}\n" for k, v in LABELS.items()))
    cfg = Config.from_dict(
        {
            "model": dataclasses.asdict(tiny_model_config(num_classes=len(NAMES), hidden_dim=64, nhead=2)),
            "data": {"format": "manifest", "root": str(data), "workers": 0, "eval_batch_size": 4},
        }
    )
    from sadcl.models import build_model

    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    ckpt = save_checkpoint(
        {
            "model": model.state_dict(),
            "config": cfg.to_dict(),
            "class_names": NAMES,
            "stage": "baseline",
            "epoch": 0,
            "step": 0,
        },
        root / "model.pt",
    )
    images = root / "images"
    _noise_image(images / "a.png", seed=1)
    _noise_image(images / "b.jpg", seed=2, size=(50, 50))
    _noise_image(images / "sub" / "c.PNG", seed=3)
    (images / "notes.txt").write_text("not an image")
    _noise_image(images / ".hidden" / "d.png", seed=4)
    bad = root / "bad" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return {"root": root, "ckpt": ckpt, "images": images, "bad": bad, "data": data}


def _reference_probs(ckpt: Path, paths: list[str]) -> np.ndarray:
    """Direct forward of the checkpoint's model in contiguous layout: probabilities [N, C]."""
    from sadcl.data import load_image

    model, config, _ = load_model(ckpt)
    tf = build_eval_transform(config)
    x = torch.stack([tf(load_image(p)) for p in paths])
    with torch.no_grad():
        return torch.sigmoid(model(x)["logits"]).numpy()


# ------------------------------------------------------------------------------------------------------- inputs
def test_expand_inputs_files_dirs_globs(env) -> None:
    images = env["images"]
    every = sorted(str(p) for p in (images / "a.png", images / "b.jpg", images / "sub" / "c.PNG"))
    assert expand_inputs([str(images)]) == every  # recursive, by extension (any case), hidden dirs skipped
    assert expand_inputs([str(images / "a.png"), str(images / "a.png")]) == [str(images / "a.png")]
    assert expand_inputs([str(images / "*.png")]) == [str(images / "a.png")]
    assert expand_inputs([str(images / "**" / "*.[pP][nN][gG]")]) == sorted(
        [str(images / "a.png"), str(images / "sub" / "c.PNG")]
    )
    assert expand_inputs([str(images / "notes.txt")]) == [str(images / "notes.txt")]  # named explicitly: kept
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        expand_inputs([str(images / "a.png"), str(images / "missing.jpg")])
    with pytest.raises(FileNotFoundError, match=r"\*\.gif: no images"):
        expand_inputs([str(images / "*.gif")])
    (env["root"] / "empty").mkdir(exist_ok=True)
    with pytest.raises(FileNotFoundError, match="empty: no images"):
        expand_inputs([str(env["root"] / "empty")])


# ------------------------------------------------------------------------------------------------- torch engine
def test_predict_matches_direct_forward_in_channels_last(env) -> None:
    paths = expand_inputs([str(env["images"])])
    pred = Predictor.from_checkpoint(env["ckpt"], device="cpu", batch_size=2)
    conv = next(p for p in pred.model.parameters() if p.ndim == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not pred.model.training
    results = pred.predict_images(paths, all_scores=True)
    got = np.array([[r["scores"][n] for n in NAMES] for r in results])
    ref = _reference_probs(env["ckpt"], paths)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    assert [r["image"] for r in results] == paths
    # PIL images and preprocessed tensors give the same probabilities.
    from sadcl.data import load_image

    pil = [load_image(p) for p in paths]
    from_pil = pred.predict_images(pil, all_scores=True)
    np.testing.assert_allclose([[r["scores"][n] for n in NAMES] for r in from_pil], got, atol=1e-6, rtol=0)
    x = torch.stack([pred.transform(im) for im in pil])
    np.testing.assert_allclose(pred.predict_tensor(x), got, atol=1e-6, rtol=0)


def test_threshold_per_class_thresholds_and_top_k(env, tmp_path) -> None:
    pred = Predictor.from_checkpoint(env["ckpt"], device="cpu", threshold=0.5)
    probs = np.array([0.9, 0.2, 0.6, 0.5])
    assert pred.select(probs) == [0, 2]  # strictly above 0.5, best first
    pred.top_k = 1
    assert pred.select(probs) == [0]
    pred.top_k = 3  # top_k never adds a label below its threshold
    assert pred.select(probs) == [0, 2]
    assert pred.select(np.full(4, 0.1)) == []

    file = tmp_path / "thr.json"
    save_thresholds(file, np.array([0.95, 0.1, 0.5, 0.3]), NAMES)
    per_class = Predictor.from_checkpoint(env["ckpt"], device="cpu", thresholds_file=file)
    np.testing.assert_array_equal(per_class.thresholds, [0.95, 0.1, 0.5, 0.3])
    assert per_class.select(probs) == [2, 3, 1]
    r = per_class.predict_images([env["images"] / "a.png"], all_scores=True)[0]
    expected = [n for n, t in zip(NAMES, per_class.thresholds) if r["scores"][n] > t]
    assert sorted(lab["label"] for lab in r["labels"]) == sorted(expected)
    scores = [lab["score"] for lab in r["labels"]]
    assert scores == sorted(scores, reverse=True)

    with pytest.raises(ValueError, match="top_k"):
        Predictor.from_checkpoint(env["ckpt"], device="cpu", top_k=0)
    save_thresholds(file, np.array([0.5, 0.5, 0.5]), ["cat", "dog", "sky"])
    with pytest.raises(ValueError, match="no threshold for class"):
        Predictor.from_checkpoint(env["ckpt"], device="cpu", thresholds_file=file)


def test_bad_image_raises_or_is_skipped(env) -> None:
    pred = Predictor.from_checkpoint(env["ckpt"], device="cpu")
    paths = [str(env["images"] / "a.png"), str(env["bad"])]
    with pytest.raises(ImageLoadError, match="broken.png"):
        pred.predict_images(paths)
    skipped: list[str] = []
    results = pred.predict_images(paths, skip_bad=True, skipped=skipped)
    assert [r["image"] for r in results] == paths[:1] and len(skipped) == 1 and "broken.png" in skipped[0]
    # Through a loader worker process the error still names the file (not a wrapped worker traceback).
    pred.workers, pred.batch_size = 1, 1
    with pytest.raises(ImageLoadError, match="broken.png"):
        pred.predict_images(paths)


def test_writers_roundtrip(tmp_path) -> None:
    results = [
        {"image": "x.png", "labels": [{"label": "dog", "score": 0.75}, {"label": "cat", "score": 0.6}]},
        {"image": "y.png", "labels": []},
    ]
    write_json(results, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == results
    buf = io.StringIO()
    write_csv(results, buf)
    assert buf.getvalue().splitlines() == ["image,label,score", "x.png,dog,0.750000", "x.png,cat,0.600000", "y.png,,"]


# ---------------------------------------------------------------------------------------------------- CLI
def test_cli_predict_json_and_csv(env, tmp_path, capsys) -> None:
    paths = expand_inputs([str(env["images"])])
    out = tmp_path / "preds.json"
    args = [
        "predict",
        str(env["ckpt"]),
        str(env["images"]),
        "--device",
        "cpu",
        "--workers",
        "0",
        "--threshold",
        "0.3",
        "--top-k",
        "3",
    ]
    assert main([*args, "--out", str(out), "--all-scores"]) == 0
    data = json.loads(out.read_text())
    assert [r["image"] for r in data] == paths
    ref = _reference_probs(env["ckpt"], paths)
    for r, p in zip(data, ref):
        np.testing.assert_allclose([r["scores"][n] for n in NAMES], p, atol=1e-5, rtol=0)
        want = [NAMES[c] for c in np.argsort(-p, kind="stable") if p[c] > 0.3][:3]
        assert [lab["label"] for lab in r["labels"]] == want

    assert main([*args, "--format", "csv"]) == 0  # to stdout
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    labelled = [(d["image"], lab["label"]) for d in data for lab in d["labels"]]
    assert [(r["image"], r["label"]) for r in rows if r["label"]] == labelled
    for r in rows:
        if r["label"]:
            match = next(
                lab for d in data if d["image"] == r["image"] for lab in d["labels"] if lab["label"] == r["label"]
            )
            assert abs(float(r["score"]) - match["score"]) < 1e-6


def test_cli_predict_bad_image_and_skip(env, tmp_path, capsys) -> None:
    base = ["predict", str(env["ckpt"]), str(env["images"] / "a.png"), str(env["bad"]), "--device", "cpu"]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and len(err.strip().splitlines()) == 1
    out = tmp_path / "p.csv"
    assert main([*base, "--skip-bad", "--out", str(out)]) == 0
    assert "skipped 1 unreadable image" in capsys.readouterr().err
    images = {r["image"] for r in csv.DictReader(out.open())}
    assert images == {str(env["images"] / "a.png")}
    assert main(["predict", str(env["ckpt"]), str(tmp_path / "nope"), "--device", "cpu"]) == 2
    assert "nope" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter's notice; it is the fast one
def test_onnxruntime_engine_matches_torch(env, tmp_path, capsys) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from sadcl.ship.export import export_onnx

    model, config, names = load_model(env["ckpt"])
    tf = build_eval_transform(config)
    onnx_path = tmp_path / "model.onnx"
    export_onnx(
        model,
        onnx_path,
        img_size=64,
        class_names=names,
        exporter="torchscript",
        metadata={"mean": list(tf.mean), "std": list(tf.std)},
    )
    paths = expand_inputs([str(env["images"])])
    ort_pred = Predictor.from_path(onnx_path, threshold=0.3, threads=1)
    assert ort_pred.engine == "onnxruntime" and ort_pred.class_names == NAMES
    got = ort_pred.predict_images(paths, all_scores=True)
    ref = Predictor.from_checkpoint(env["ckpt"], device="cpu", threshold=0.3).predict_images(paths, all_scores=True)
    for g, r in zip(got, ref):
        np.testing.assert_allclose([g["scores"][n] for n in NAMES], [r["scores"][n] for n in NAMES], atol=1e-4)
    # The CLI picks onnxruntime for a .onnx file.
    out = tmp_path / "onnx.json"
    assert main(["predict", str(onnx_path), *paths, "--out", str(out), "--threshold", "0.3"]) == 0
    assert [r["image"] for r in json.loads(out.read_text())] == paths
    assert main(["predict", str(onnx_path), *paths, "--engine", "torch"]) == 2
    assert "needs a checkpoint" in capsys.readouterr().err
    # Options of the other engine are refused, not silently ignored.
    assert main(["predict", str(onnx_path), *paths, "--no-ema", "--device", "cuda"]) == 2
    assert "--no-ema, --device cuda: only for the torch engine" in capsys.readouterr().err
    assert main(["predict", str(env["ckpt"]), *paths, "--threads", "1"]) == 2
    assert "--threads: only for the onnxruntime engine" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_evaluate_matches_summarize(env, tmp_path, capsys) -> None:
    out = tmp_path / "metrics.json"
    assert (
        main(
            [
                "evaluate",
                str(env["ckpt"]),
                "--data-root",
                str(env["data"]),
                "--device",
                "cpu",
                "--out",
                str(out),
                "--per-class",
                "--batch-size",
                "4",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "mAP" in printed and "top-3" in printed and "sky" in printed
    report = json.loads(out.read_text())
    paths = [str(env["data"] / k) for k in LABELS]
    targets = np.array([[float(n in v.split()) for n in NAMES] for v in LABELS.values()])
    expected = summarize(_reference_probs(env["ckpt"], paths), targets)
    assert report["split"] == "test" and report["num_images"] == len(LABELS)
    for key in ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1", "CF1_top3", "OF1_top3"):
        assert report["metrics"][key] == pytest.approx(expected[key], abs=1e-6), key
    assert list(report["per_class_AP"]) == NAMES
    np.testing.assert_allclose(list(report["per_class_AP"].values()), expected["per_class_AP"], atol=1e-6)

    thr = tmp_path / "thr.json"
    save_thresholds(thr, np.array([0.2, 0.4, 0.6, 0.8]), NAMES)
    assert main(["evaluate", str(env["ckpt"]), "--device", "cpu", "--thresholds", str(thr), "--out", str(out)]) == 0
    per_class = summarize(_reference_probs(env["ckpt"], paths), targets, None, np.array([0.2, 0.4, 0.6, 0.8]))
    assert json.loads(out.read_text())["metrics"]["CF1"] == pytest.approx(per_class["CF1"], abs=1e-6)
    assert main(["evaluate", str(env["ckpt"]), "--device", "cpu", "--split", "nosuchsplit"]) == 2


def test_cli_tune_thresholds_on_engine_evaluate(env, tmp_path, capsys) -> None:
    out = tmp_path / "thr.json"
    assert (
        main(
            [
                "tune-thresholds",
                str(env["ckpt"]),
                "--out",
                str(out),
                "--split",
                "test",
                "--eval-split",
                "none",
                "--min-positives",
                "1",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert list(json.loads(out.read_text())) == NAMES
    assert "tuned on test: 6 images" in capsys.readouterr().out


@pytest.mark.slow
def test_a_closed_pipe_ends_quietly(env: dict[str, Path]) -> None:
    import subprocess
    import sys

    many = env["root"] / "many"  # enough rows to overflow the pipe's buffer after `head` has left
    many.mkdir(exist_ok=True)
    for i in range(1500):
        link = many / f"{i:04d}.png"
        if not link.exists():
            link.symlink_to(env["images"] / "a.png")
    cmd = f"{sys.executable} -m sadcl predict {env['ckpt']} {many} --format csv --batch-size 64 | head -n 1"
    proc = subprocess.run(
        ["bash", "-o", "pipefail", "-c", cmd],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.stdout.startswith("image,") and proc.returncode == 0, proc.stderr
    assert "Broken pipe" not in proc.stderr and "Traceback" not in proc.stderr


def test_options_that_would_be_ignored_are_errors(env: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    from sadcl.cli import main

    assert main(["predict", str(env["ckpt"]), str(env["images"]), "--format", "csv", "--all-scores"]) == 2
    assert "--all-scores: only with --format json" in capsys.readouterr().err
    assert main(["export", str(env["ckpt"]), "--out", str(env["root"] / "m.onnx"), "--img-size", "0"]) == 2
    assert "--img-size must be >= 1, got 0" in capsys.readouterr().err
