"""ONNX export: parity with PyTorch, a dynamic batch axis, metadata, atomic writes, and the runner."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from sadcl.config import ModelConfig  # noqa: E402
from sadcl.ship import export as export_mod  # noqa: E402
from sadcl.ship.export import OnnxRunner, export_onnx  # noqa: E402
from support.models import tiny_model, tiny_model_config  # noqa: E402

NAMES = ["cat", "dog", "digit_0", "bag", "zebra"]


def _tiny_config(contrastive: bool = True) -> ModelConfig:
    return tiny_model_config(num_classes=len(NAMES), contrastive=contrastive, proj_dim=16, bank_slots=4)


def _tiny_model(contrastive: bool = True) -> torch.nn.Module:
    return tiny_model(num_classes=len(NAMES), contrastive=contrastive, proj_dim=16, bank_slots=4)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = _tiny_model()
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    info = export_onnx(
        model,
        path,
        img_size=64,
        with_features=True,
        class_names=NAMES,
        metadata={"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    )
    return model, path, info


def test_export_parity_and_dynamic_batch(exported) -> None:
    model, path, info = exported
    assert info["max_abs_diff"] is not None and info["max_abs_diff"] <= 1e-4
    assert info["outputs"] == ["logits", "probs", "features"] and info["dynamic_batch"]
    assert path.is_file() and info["bytes"] == path.stat().st_size
    assert not list(path.parent.glob("*.tmp"))

    runner = OnnxRunner(path, threads=1)
    assert runner.class_names == NAMES and runner.img_size == (64, 64)
    assert json.loads(runner.metadata["mean"]) == [0.485, 0.456, 0.406]
    for batch in (1, 4):  # neither is the tracing batch (2)
        x = torch.randn(batch, 3, 64, 64)
        got = runner(x.numpy())
        with torch.inference_mode():
            ref = model(x)
        assert got["logits"].shape == (batch, 5) and got["features"].shape == (batch, 5, 32)
        np.testing.assert_allclose(got["logits"], ref["logits"].numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(got["features"], ref["features"].numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(got["probs"], 1 / (1 + np.exp(-got["logits"])), atol=1e-6)
    with pytest.raises(ValueError, match=r"\[B, 3, 64, 64\]"):
        runner(np.zeros((1, 3, 32, 32), np.float32))


def test_failed_parity_keeps_the_old_file(tmp_path, monkeypatch) -> None:
    model = _tiny_model(contrastive=False)
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous export")
    monkeypatch.setattr(export_mod, "_parity", lambda *a, **k: 0.5)
    with pytest.raises(RuntimeError, match="parity check failed"):
        export_onnx(model, path, img_size=64, exporter="torchscript")
    assert path.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_torchscript_exporter_and_fixed_batch(tmp_path) -> None:
    model = _tiny_model(contrastive=False)
    info = export_onnx(model, tmp_path / "m.onnx", img_size=(64, 96), exporter="torchscript", dynamic_batch=False)
    assert info["exporter"] == "torchscript" and info["max_abs_diff"] <= 1e-4
    runner = OnnxRunner(tmp_path / "m.onnx")
    assert runner.img_size == (64, 96) and runner.output_names == ["logits", "probs"]
    assert runner(np.zeros((2, 3, 64, 96), np.float32))["probs"].shape == (2, 5)


def test_bad_arguments(tmp_path) -> None:
    model = _tiny_model(contrastive=False)
    with pytest.raises(ValueError, match="class names"):
        export_onnx(model, tmp_path / "m.onnx", img_size=64, class_names=["a"], exporter="torchscript")
    with pytest.raises(ValueError, match="exporter"):
        export_onnx(model, tmp_path / "m.onnx", img_size=64, exporter="tflite")
    with pytest.raises(FileNotFoundError):
        OnnxRunner(tmp_path / "missing.onnx")


def _write_checkpoint(path, *, contrastive: bool = True) -> None:
    """A checkpoint in the documented format (docs/design.md, "Checkpoints") around a tiny random model."""
    from sadcl.config import Config

    cfg = Config.from_dict({"model": dataclasses.asdict(_tiny_config(contrastive))})
    model = _tiny_model(contrastive=contrastive)
    torch.save(
        {
            "model": model.state_dict(),
            "config": cfg.to_dict(),
            "class_names": NAMES,
            "stage": "sadcl" if contrastive else "baseline",
            "epoch": 0,
            "step": 0,
        },
        path,
    )


@pytest.mark.slow
def test_cli_export(tmp_path, capsys) -> None:
    from sadcl.cli import main

    ckpt = tmp_path / "model.pt"
    _write_checkpoint(ckpt)
    out = tmp_path / "out" / "model.onnx"
    assert main(["export", str(ckpt), "--format", "onnx", "--out", str(out), "--with-features"]) == 0
    assert "max abs diff" in capsys.readouterr().out
    runner = OnnxRunner(out)
    assert runner.class_names == NAMES and runner.output_names == ["logits", "probs", "features"]
    assert len(json.loads(runner.metadata["mean"])) == 3
    assert main(["export", str(tmp_path / "missing.pt"), "--out", str(out)]) == 2
