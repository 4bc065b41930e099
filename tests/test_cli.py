"""End to end on a tiny MOM-30: `sadcl train` (both stages), artefacts, evaluate, predict, resume after a kill."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from sadcl.checkpoint import load_checkpoint
from sadcl.cli import main
from sadcl.cli.train import default_config_path
from sadcl.config import load_config
from sadcl.data.mom30 import generate_mom30
from support.models import TINY_MODEL_OVERRIDES

pytest.importorskip("timm")

TINY = [
    *TINY_MODEL_OVERRIDES,
    "model.img_size=64",
    "model.bank_slots=8",
    "model.dropout=0.1",
    "data.batch_size=8",
    "data.eval_batch_size=16",
    "data.workers=0",
    "data.normalization=imagenet",
    "data.train_preset=crop",
    "data.options={}",
    "train.baseline_epochs=2",
    "train.epochs=2",
    "train.progress=false",
    "train.checkpoint_interval=2",
    "train.val_interval=1",  # the demo config validates every second epoch; these tests read every epoch's val
    "train.prototype_threshold=0.3",
    "train.seed=3",
    "train.ema_decay=0.9",
    "optim.lr=0.001",
]


class Killed(Exception):
    """Stands in for a process killed between two steps: nothing after it runs, no cleanup saves anything."""


@pytest.fixture(scope="module")
def mom30_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mom30")
    generate_mom30(root, size=64, n_train=48, n_val=16, n_test=16, seed=0, progress=False)
    return root


def _overrides(root: Path, out: Path) -> list[str]:
    return [*TINY, f"data.root={root}", f"train.output_dir={out}"]


@pytest.fixture(scope="module")
def run_dir(mom30_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "full"
    assert main(["train", *_overrides(mom30_root, out)]) == 0
    return out


@pytest.mark.slow
def test_train_writes_every_artefact(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    for stage in ("baseline", "sadcl"):
        d = run_dir / stage
        for name in ("last.pt", "best.pt", "metrics.json", "results.json", "config.yaml"):
            assert (d / name).is_file(), d / name
        assert any((d / "tb").iterdir()), "TensorBoard event file"
        history = json.loads((d / "metrics.json").read_text())
        assert [row["epoch"] for row in history] == [0, 1]
        assert {"regular", "ema", "selected"} <= set(history[0]["val"])
        best = torch.load(d / "best.pt", map_location="cpu", weights_only=True)  # weights_only contract
        assert best["selected"] in ("ema", "regular") and best["stage"] == stage
        assert len(best["class_names"]) == 30
        results = json.loads((d / "results.json").read_text())
        assert 0.0 <= results["test"]["mAP"] <= 100.0
        assert "test_regular" not in results and "test_ema" not in results  # the test split sees one model
    stage_cfg = yaml.safe_load((run_dir / "sadcl" / "config.yaml").read_text())
    assert stage_cfg["model"]["contrastive"] is True
    assert yaml.safe_load((run_dir / "baseline" / "config.yaml").read_text())["model"]["contrastive"] is False
    protos = torch.from_numpy(__import__("numpy").load(run_dir / "prototypes.npy"))
    assert protos.shape == (30, 32)
    report = json.loads((run_dir / "prototypes.json").read_text())
    assert sum(c["positives"] for c in report["per_class"].values()) > 0
    assert {"zero", "near_zero", "fallback", "absent"} <= set(report["health"])
    # Diagnostics: per-epoch train-batch mAP, raw and weighted terms, trunk gradient shares, prototype health.
    for stage, terms in (("baseline", ("asl",)), ("sadcl", ("asl", "sscl", "pscl"))):
        history = json.loads((run_dir / stage / "metrics.json").read_text())
        train = history[0]["train"]
        assert 0.0 <= train["train_mAP"] <= 100.0
        for t in terms:
            assert f"{t}_unweighted" in train and t in train
        assert history[0]["train_images"] == 48 // 8 * 8 and history[0]["train_seconds"] > 0
    sadcl_train = json.loads((run_dir / "sadcl" / "metrics.json").read_text())[0]["train"]
    assert sum(sadcl_train[f"grad_share_{t}"] for t in ("asl", "sscl", "pscl")) == pytest.approx(1.0)
    assert -1.0 <= sadcl_train["grad_cos_asl_contrastive"] <= 1.0
    assert {"zero", "near_zero"} <= set(json.loads((run_dir / "sadcl" / "metrics.json").read_text())[0]["prototypes"])
    for stage in ("baseline", "sadcl"):  # what `sadcl train` prints as its speed
        assert json.loads((run_dir / stage / "results.json").read_text())["train_images_per_s"] > 0
    # The stage-2 model started from these prototypes (before any training, bank slots = prototypes).
    assert set(json.loads((run_dir / "results.json").read_text())) == {"baseline", "sadcl"}
    assert load_config(run_dir / "config.yaml").train.output_dir == str(run_dir)


@pytest.mark.slow
def test_existing_run_is_not_overwritten(run_dir: Path, mom30_root: Path, capsys: pytest.CaptureFixture) -> None:
    before = (run_dir / "baseline" / "last.pt").read_bytes()
    assert main(["train", *_overrides(mom30_root, run_dir)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (run_dir / "baseline" / "last.pt").read_bytes() == before


@pytest.mark.slow
def test_resume_with_another_config_is_refused_before_writing(
    run_dir: Path, mom30_root: Path, capsys: pytest.CaptureFixture
) -> None:
    saved = {p: p.read_bytes() for p in (run_dir / "config.yaml", run_dir / "sadcl" / "config.yaml")}
    assert main(["train", "--resume", *_overrides(mom30_root, run_dir), "loss.weight_sscl=3", "train.epochs=5"]) == 2
    err = capsys.readouterr().err
    assert "loss.weight_sscl: 100.0 -> 3.0" in err and "train.epochs: 2 -> 5" in err and len(err.splitlines()) == 1
    assert all(p.read_bytes() == b for p, b in saved.items())
    # Where and how verbosely it runs may change.
    assert main(["train", "--resume", *_overrides(mom30_root, run_dir), "train.progress=true"]) == 0


def test_a_bad_test_split_fails_before_any_training(
    mom30_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "bad_test"
    assert main(["train", *_overrides(mom30_root, out), "data.test_split=testing"]) == 2
    assert "testing" in capsys.readouterr().err
    assert not (out / "baseline" / "last.pt").exists() and not (out / "baseline" / "metrics.json").exists()


@pytest.mark.slow
def test_without_a_validation_split_the_regular_weights_are_kept(mom30_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "noval"
    assert (
        main(
            [
                "train",
                "--stage",
                "baseline",
                *_overrides(mom30_root, out),
                "data.val_split=null",
                "train.baseline_epochs=1",
                "train.ema_decay=0.9998",
            ]
        )
        == 0
    )
    results = json.loads((out / "baseline" / "results.json").read_text())
    assert results["selected"] == "regular" and "no validation split" in results["selection"]
    assert set(results["test"]) >= {"mAP", "CF1", "OF1"}


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted(run_dir: Path, mom30_root: Path, tmp_path: Path) -> None:
    from sadcl.training.train import run_training

    out = tmp_path / "killed"
    cfg = load_config(default_config_path(), _overrides(mom30_root, out))
    kills = [("baseline", 1, 3), ("sadcl", 0, 5)]  # mid-epoch, one step after a mid-epoch checkpoint

    def hook(stage: str, epoch: int, done: int) -> None:
        if kills and (stage, epoch, done) == kills[0]:
            kills.pop(0)
            raise Killed

    with pytest.raises(Killed):
        run_training(cfg, hook=hook)
    last = load_checkpoint(out / "baseline" / "last.pt")
    assert (last["epoch"], last["step"], last["epoch_done"]) == (1, 2, False)
    with pytest.raises(Killed):
        run_training(cfg, resume=True, hook=hook)
    assert main(["train", "--resume", *_overrides(mom30_root, out)]) == 0

    for stage in ("baseline", "sadcl"):
        timing = ("train_seconds", "train_images_per_s")  # wall-clock measurements, not results
        want = {k: v for k, v in json.loads((run_dir / stage / "results.json").read_text()).items() if k not in timing}
        got = {k: v for k, v in json.loads((out / stage / "results.json").read_text()).items() if k not in timing}
        assert got == want, stage
        a = load_checkpoint(run_dir / stage / "last.pt")
        b = load_checkpoint(out / stage / "last.pt")
        for key in ("model", "ema"):
            for name, tensor in a[key].items():
                assert torch.equal(tensor, b[key][name]), f"{stage} {key} {name}"
        assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()


@pytest.mark.slow
def test_build_prototypes_cli(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "p.npy"
    assert (
        main(
            [
                "build-prototypes",
                str(run_dir / "baseline" / "best.pt"),
                "--out",
                str(out),
                "--threshold",
                "0.3",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    import numpy as np

    # Same checkpoint, data and rule as inside `sadcl train`: the same prototypes.
    np.testing.assert_allclose(np.load(out), np.load(run_dir / "prototypes.npy"), rtol=1e-5, atol=1e-6)
    assert "positives" in capsys.readouterr().out
    assert (
        main(
            [
                "build-prototypes",
                str(run_dir / "baseline" / "best.pt"),
                "--out",
                str(out),
                "--rule",
                "mean_selected",
                "--threshold",
                "1.5",
            ]
        )
        == 2
    )


@pytest.mark.slow
def test_val_interval_skips_validation_and_changes_no_weight(mom30_root: Path, tmp_path: Path) -> None:
    from sadcl.training.train import run_training

    runs = {}
    for interval in (1, 2):
        out = tmp_path / f"every{interval}"
        extra = ["train.baseline_epochs=3", f"train.val_interval={interval}", "train.early_stop_patience=null"]
        run_training(load_config(default_config_path(), [*_overrides(mom30_root, out), *extra]), stages=("baseline",))
        runs[interval] = out / "baseline"
    every, sparse = (json.loads((runs[i] / "metrics.json").read_text()) for i in (1, 2))
    assert [("val" in r) for r in every] == [True, True, True]
    assert [("val" in r) for r in sparse] == [False, True, True]  # epoch 2 of 3, then always the last
    for a, b in zip(every, sparse):
        assert a["train"] == b["train"]  # evaluating (or not) draws nothing from the training's RNG streams
        if "val" in b:
            assert a["val"] == b["val"]
    for key in ("model", "ema"):
        a, b = (load_checkpoint(runs[i] / "last.pt")[key] for i in (1, 2))
        assert all(torch.equal(a[n], b[n]) for n in a), key
    score = {e: max(every[e]["val"][w]["mAP"] for w in ("regular", "ema")) for e in range(3)}
    assert json.loads((runs[2] / "results.json").read_text())["best_epoch"] == max((1, 2), key=score.__getitem__)


def test_early_stop_counts_from_the_last_validated_epoch() -> None:
    from sadcl.training.stage import StageProgress, _early_stop, _last_validated

    progress = StageProgress(history=[{"epoch": 0, "val": {}}, {"epoch": 1}, {"epoch": 2}])
    assert _last_validated(progress) == 0
    assert not _early_stop(1, 0, _last_validated(progress))  # epochs 1-2 were never scored: no reason to stop
    progress.history.append({"epoch": 3, "val": {}})
    assert _early_stop(1, 0, _last_validated(progress))  # scored at 3, best still 0
    assert _last_validated(StageProgress()) == -1 and not _early_stop(0, -1, -1)
