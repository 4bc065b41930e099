"""``model.head=linear``: the plain head (GAP + linear) as a model, through one-stage training and every command that
uses a trained model; clear errors where label-level features are needed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sadcl.cli import main
from sadcl.config import ConfigError
from sadcl.models import PlainClassifier, build_model, label_features
from support.models import tiny_model_config

pytest.importorskip("timm")


def test_plain_head_is_average_pooling_then_linear_and_its_attention_is_the_cam() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_model_config(head="linear")).eval()
    assert isinstance(model, PlainClassifier) and not model.contrastive
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x, return_attn=True)
        feat = model.backbone(x)  # [2, 512, 2, 2]
        per_location = torch.einsum("bdhw,cd->bchw", feat, model.fc.weight)  # class scores at each location
    assert set(out) == {"logits", "attn"} and out["logits"].shape == (2, 5)
    torch.testing.assert_close(out["logits"], per_location.mean((2, 3)) + model.fc.bias, rtol=1e-5, atol=1e-5)
    assert out["attn"].shape == (2, 5, *feat.shape[2:])
    torch.testing.assert_close(out["attn"].sum((2, 3)), torch.ones(2, 5))
    assert torch.equal(out["attn"].flatten(2).argmax(-1), per_location.flatten(2).argmax(-1))
    with pytest.raises(ValueError, match="no label-level features"):
        label_features(out)


def test_plain_head_refuses_the_contrastive_extras() -> None:
    with pytest.raises(ConfigError, match="model.head=linear has no label-level features"):
        build_model(tiny_model_config(head="linear", contrastive=True))
    with pytest.raises(ConfigError, match="model.head must be one of"):
        tiny_model_config(head="mlp")


def test_plain_head_onnx_parity(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from sadcl.ship.export import OnnxRunner, export_onnx

    torch.manual_seed(0)
    model = build_model(tiny_model_config(head="linear")).eval()
    info = export_onnx(model, tmp_path / "m.onnx", img_size=64)
    assert info["max_abs_diff"] <= 1e-4 and info["outputs"] == ["logits", "probs"]
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)["logits"].numpy()
    np.testing.assert_allclose(OnnxRunner(tmp_path / "m.onnx", threads=1)(x.numpy())["logits"], ref, atol=1e-4)
    with pytest.raises(ValueError, match="has no 'features'"):
        export_onnx(model, tmp_path / "f.onnx", img_size=64, with_features=True)  # a clear error, before export


@pytest.mark.slow
def test_plain_head_trains_in_one_stage_and_every_command_uses_it(tmp_path: Path, capsys) -> None:
    from sadcl.data.mom30 import generate_mom30
    from test_cli import TINY

    root = tmp_path / "mom30"
    generate_mom30(root, size=64, n_train=48, n_val=16, n_test=16, seed=0, progress=False)
    out = tmp_path / "plain"
    assert main(["train", *TINY, f"data.root={root}", f"train.output_dir={out}", "model.head=linear"]) == 0
    printed = capsys.readouterr().out
    assert "sadcl " not in printed.split("stage", 1)[1].split("elapsed")[0]  # one stage printed, no SADCL row
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"baseline"} and results["baseline"]["epochs_run"] == 4  # baseline_epochs + epochs
    assert not (out / "sadcl").exists() and not (out / "prototypes.npy").exists()
    ckpt = str(out / "baseline" / "best.pt")

    assert main(["evaluate", ckpt, "--split", "test"]) == 0
    assert f"{results['baseline']['test']['mAP']:.2f}" in capsys.readouterr().out
    image = str(next((root / "images" / "test").glob("*.png")))
    assert main(["predict", ckpt, image, "--format", "json", "--top-k", "2"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["labels"]) == 2
    assert main(["tune-thresholds", ckpt, "--out", str(tmp_path / "th.json")]) == 0
    assert {"digit_0", "zebra"} <= set(json.loads((tmp_path / "th.json").read_text()))
    assert main(["export", ckpt, "--format", "dir", "--out", str(tmp_path / "dir")]) == 0
    assert json.loads((tmp_path / "dir" / "config.json").read_text())["architecture"] == "Linear"
    assert "global average pooling + linear" in (tmp_path / "dir" / "README.md").read_text()
    assert main(["visualize", "attention", ckpt, image, "--out", str(tmp_path / "att.png")]) == 0
    assert (tmp_path / "att.png").stat().st_size > 0
    # The report: the numbers of `sadcl evaluate`, the example errors drawn with the plain head's class maps.
    report = tmp_path / "report"
    argv = ["report", ckpt, "--split", "test", "--out", str(report), "--val-split", "none", "--examples", "2"]
    assert main([*argv, "--bootstrap", "20"]) == 0
    rep = json.loads((report / "report.json").read_text())
    assert rep["models"][0]["summary"]["mAP"] == pytest.approx(results["baseline"]["test"]["mAP"], abs=1e-6)
    page = (report / "index.html").read_text()
    assert '<td class="l">plain head: global average pooling + linear (ASL)</td>' in page and "sscl" not in page
    assert page.count("data:image/png;base64,") >= 2  # the example errors, drawn with the class maps
    capsys.readouterr()
    # Prototypes need label-level features: one clear line, no traceback.
    assert main(["build-prototypes", ckpt, "--out", str(tmp_path / "p.npy")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sadcl build-prototypes:")]
    assert len(errors) == 1 and "no label-level features" in errors[0]
    assert main(["train", "--stage", "sadcl", *TINY, f"data.root={root}", f"train.output_dir={tmp_path / 's2'}",
                 "model.head=linear"]) == 2  # fmt: skip
    assert "stage 2 (SADCL) needs label-level features" in capsys.readouterr().err
