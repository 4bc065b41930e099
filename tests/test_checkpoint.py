"""Checkpoint I/O: atomic save, weights_only load, clear errors."""

from pathlib import Path

import pytest
import torch

from sadcl.checkpoint import load_checkpoint, save_checkpoint
from support.models import tiny_model_config


class _NotPlain:
    """An object that weights_only loading rejects."""


def test_roundtrip_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.arange(3.0)}, "config": {"a": 1}, "epoch": 2}, path)
    state = torch.load(path, weights_only=True)
    assert state["epoch"] == 2
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.arange(3.0))


def test_failing_save_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}, "config": {}}, path)
    with pytest.raises(ValueError, match="weights_only"):
        save_checkpoint({"model": _NotPlain(), "config": {}}, path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_missing_and_corrupt(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    with pytest.raises(ValueError, match="bad.pt"):
        load_checkpoint(bad)
    other = tmp_path / "other.pt"
    torch.save({"x": 1}, other)
    with pytest.raises(ValueError, match="not a sadcl checkpoint"):
        load_checkpoint(other)


def test_load_model_rebuilds(tmp_path: Path) -> None:
    from sadcl.config import Config
    from sadcl.inference.open import load_model
    from sadcl.models import build_model

    # ModelConfig's defaults at a tiny size: dropout 0.1, contrastive (projection head, bank, prototypes).
    mcfg = tiny_model_config(num_classes=3, dropout=0.1, contrastive=True, proj_dim=16, bank_slots=2)
    cfg = Config(model=mcfg)
    model = build_model(mcfg)
    path = save_checkpoint(
        {"model": model.state_dict(), "ema": None, "config": cfg.to_dict(), "class_names": ["a", "b", "c"]},
        tmp_path / "best.pt",
    )
    loaded, cfg2, names = load_model(path)
    assert names == ["a", "b", "c"] and cfg2.model.num_classes == 3
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
