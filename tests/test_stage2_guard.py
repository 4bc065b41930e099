"""The stage-2 guard (``train.stage2_guard``): a stage 2 that never beats the model it started from on val ships
that model, says so, and trains exactly as without the guard."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from sadcl.checkpoint import load_checkpoint, selected_weights
from sadcl.cli import main
from sadcl.models.sadcl import CONTRASTIVE_PREFIXES

pytest.importorskip("timm")


@pytest.mark.slow
def test_guard_ships_stage1_when_stage2_gets_worse_and_changes_no_training(tmp_path: Path, caplog) -> None:
    from support.data import write_colour_manifest
    from support.models import TINY_MODEL_OVERRIDES

    root = write_colour_manifest(tmp_path / "data")
    # A stage 1 that learns the colour labels, then a stage 2 forced to get worse: a learning rate 500x stage 1's
    # wrecks the weights it starts from (AdamW moves every weight by ~0.5 a step).
    worse = [
        *TINY_MODEL_OVERRIDES,
        "model.img_size=32",
        "model.bank_slots=8",
        "model.num_classes=5",
        "data.format=manifest",
        f"data.root={root}",
        "data.normalization=imagenet",
        "data.batch_size=8",
        "data.eval_batch_size=16",
        "data.workers=0",
        "train.baseline_epochs=4",
        "train.epochs=2",
        "train.val_interval=1",
        "train.progress=false",
        "train.prototype_threshold=0.3",
        "train.baseline_lr=0.001",
        "optim.lr=0.5",
    ]
    out = tmp_path / "guarded"
    assert main(["train", *worse, f"train.output_dir={out}"]) == 0
    results = json.loads((out / "results.json").read_text())
    stage1, stage2 = results["baseline"], results["sadcl"]
    guard = stage2["guard"]
    assert guard["kept_start"] and stage2["best_epoch"] == -1
    assert guard["stage2_best_val_mAP"] <= guard["start_val_mAP"]
    # The start's val score is stage 1's own (same weights, same split), and the shipped model is stage 1's.
    assert guard["start_val_mAP"] == pytest.approx(stage1["val"][stage1["selected"]]["mAP"], abs=1e-6)
    assert stage2["test"] == stage1["test"]
    shipped = selected_weights(load_checkpoint(out / "sadcl" / "best.pt"), use_ema=stage2["selected"] == "ema")
    start = selected_weights(load_checkpoint(out / "baseline" / "best.pt"), use_ema=stage1["selected"] == "ema")
    for name, tensor in start.items():
        assert torch.equal(shipped[name], tensor), name
    assert all(k.startswith(CONTRASTIVE_PREFIXES) for k in set(shipped) - set(start))
    assert "stage-2 guard" in stage2["selection"]
    # ... and says so in the log (a warning), in results.json (above) and in the model card (below).
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.endswith("stage")]
    assert any("no stage-2 epoch beat the weights it started from" in m and "stage-1 weights ship" in m for m in warned)
    assert main(["export", str(out / "sadcl" / "best.pt"), "--format", "dir", "--out", str(tmp_path / "dir")]) == 0
    card = (tmp_path / "dir" / "README.md").read_text()
    assert "the stage-1 weights ship" in card and "best epoch none" in card

    # Without the guard: stage 2's own best epoch ships, and the training itself is the same step for step.
    off = tmp_path / "unguarded"
    caplog.clear()
    argv = ["train", "--stage", "sadcl", "--baseline-checkpoint", str(out / "baseline" / "best.pt"), *worse]
    assert main([*argv, f"train.output_dir={off}", "train.stage2_guard=false"]) == 0
    own = json.loads((off / "sadcl" / "results.json").read_text())
    assert own["best_epoch"] >= 0 and "guard" not in own
    assert not [r for r in caplog.records if "stage-2 guard" in r.getMessage()]
    a = json.loads((out / "sadcl" / "metrics.json").read_text())
    b = json.loads((off / "sadcl" / "metrics.json").read_text())
    assert [r["train"] for r in a] == [r["train"] for r in b] and [r.get("val") for r in a] == [r.get("val") for r in b]
