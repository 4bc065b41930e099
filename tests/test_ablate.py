"""``sadcl ablate`` end to end on a small manifest dataset (any reader works), its statistics and its rows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from sadcl.ablate import BUILTIN_ROWS, custom_row, paired_stats
from sadcl.cli import main
from support.data import write_colour_manifest
from support.models import TINY_MODEL_OVERRIDES

pytest.importorskip("timm")


@pytest.fixture(scope="module")
def manifest_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_colour_manifest(tmp_path_factory.mktemp("manifest"))


def _argv(root: Path, out: Path) -> list[str]:
    return [
        "ablate",
        "--out",
        str(out),
        "--seeds",
        "0",
        "1",
        "--rows",
        "baseline",
        "sadcl",
        "plain",
        "--yes",
        *TINY_MODEL_OVERRIDES,
        "model.img_size=32",
        "model.bank_slots=8",
        "model.num_classes=5",
        "data.format=manifest",
        f"data.root={root}",
        "data.options={}",
        "data.normalization=imagenet",
        "data.batch_size=8",
        "data.eval_batch_size=16",
        "data.workers=0",
        "train.baseline_epochs=1",
        "train.epochs=1",
        "train.max_steps_per_epoch=2",
        "train.prototype_threshold=0.3",
    ]


@pytest.mark.slow
def test_ablate_on_a_manifest_dataset(manifest_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "abl"
    assert main(_argv(manifest_root, out)) == 0
    printed = capsys.readouterr().out
    assert "8 run(s) to train" in printed  # the estimate before anything trains: 2 seeds x (stage 1 + 3 rows)
    data = json.loads((out / "ablation.json").read_text())
    assert set(data["rows"]) == {"stage1", "baseline", "sadcl", "sadcl_guarded", "plain"}
    for row in data["rows"].values():
        assert set(row["seeds"]) == {"0", "1"}
        for v in row["seeds"].values():
            assert 0 <= v["val_mAP"] <= 100 and 0 <= v["test_mAP"] <= 100
    assert data["paired"]["sadcl"]["vs"] == "baseline" and data["paired"]["sadcl"]["test_mAP"]["n"] == 2
    deltas = [data["rows"]["sadcl"]["seeds"][s]["test_mAP"] - data["rows"]["baseline"]["seeds"][s]["test_mAP"]
              for s in ("0", "1")]  # fmt: skip
    assert data["paired"]["sadcl"]["test_mAP"]["mean"] == pytest.approx(np.mean(deltas))
    # The guarded row is SADCL where stage 2 beat stage 1 on val, else stage 1 (what `sadcl train` ships).
    for s in ("0", "1"):
        g, s1 = data["rows"]["sadcl_guarded"]["seeds"][s], data["rows"]["stage1"]["seeds"][s]
        assert g["test_mAP"] == (s1["test_mAP"] if g["kept_stage1"] else data["rows"]["sadcl"]["seeds"][s]["test_mAP"])
    assert (
        data["verdict"].startswith("on this data SADCL changes test mAP by") and "plain head scores" in data["verdict"]
    )
    # What `sadcl train` ships, against the plain head (issue #27's (b)), paired by seed.
    shipped = data["paired"]["sadcl_guarded_vs_plain"]["test_mAP"]
    gap = [data["rows"]["sadcl_guarded"]["seeds"][s]["test_mAP"] - data["rows"]["plain"]["seeds"][s]["test_mAP"]
           for s in ("0", "1")]  # fmt: skip
    assert shipped["n"] == 2 and shipped["mean"] == pytest.approx(np.mean(gap))
    assert f"that − the plain head: {shipped['mean']:+.2f}" in data["verdict"]
    md = (out / "ablation.md").read_text()
    assert f"**Verdict:** {data['verdict']}" in md and "| seed |" in md and (out / "ablation.png").stat().st_size > 0
    # Every stage-2 row starts from the seed's stage 1 and its prototypes, without the guard; the plain row is one
    # stage of the whole budget on the backbone's last map.
    cfg = (out / "seed0" / "baseline" / "sadcl" / "config.yaml").read_text()
    assert f"prototypes: {out / 'seed0' / 'stage1' / 'prototypes.npy'}" in cfg and "stage2_guard: false" in cfg
    plain = json.loads((out / "seed1" / "plain" / "baseline" / "results.json").read_text())
    assert (
        plain["epochs_run"] == 2
        and "head: linear" in (out / "seed1" / "plain" / "baseline" / "config.yaml").read_text()
    )

    # Resumable: the same command trains nothing more.
    mtime = (out / "seed1" / "sadcl" / "sadcl" / "results.json").stat().st_mtime
    assert main(_argv(manifest_root, out)) == 0
    assert "run(s) to train" not in capsys.readouterr().out
    assert (out / "seed1" / "sadcl" / "sadcl" / "results.json").stat().st_mtime == mtime
    # A run directory is never relabelled with other settings.
    assert main([*_argv(manifest_root, out), "loss.weight_pscl=7"]) == 2
    assert "was run with other settings" in capsys.readouterr().err


def test_paired_stats_matches_the_t_interval() -> None:
    st = paired_stats([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n), sd = 1
    assert st["n"] == 3 and st["mean"] == 2.0 and st["std"] == 1.0 and st["wins"] == 3
    assert st["ci95_low"] == pytest.approx(2 - half) and st["ci95_high"] == pytest.approx(2 + half)
    assert st["p"] == pytest.approx(0.0741799, abs=1e-6)
    one = paired_stats([0.5])
    assert one["mean"] == 0.5 and math.isnan(one["ci95_low"])


def test_a_one_stage_config_still_gives_two_stage_rows(tmp_path: Path) -> None:
    from sadcl.ablate import AblationPlan
    from sadcl.ablate.runner import run_config
    from sadcl.config import load_config
    from sadcl.training.train import is_single_stage, stage_config

    own = str(Path(__file__).resolve().parents[1] / "configs" / "own_data.yaml")
    rows = [BUILTIN_ROWS[k] for k in ("baseline", "sadcl", "ml_decoder", "plain")]
    one_stage = ["data.root=my_data", "train.single_stage=true"]  # own_data.yaml's ML-Decoder in one stage
    plan = AblationPlan(config=own, overrides=one_stage, seeds=[1], rows=rows, out=tmp_path)
    assert is_single_stage(load_config(own, one_stage))
    stage1 = run_config(plan, 1, None)
    assert not is_single_stage(stage1) and stage_config(stage1, "baseline").train.epochs == 4  # stage 1 alone
    assert not is_single_stage(run_config(plan, 1, BUILTIN_ROWS["sadcl"]))
    one = run_config(plan, 1, BUILTIN_ROWS["ml_decoder"])  # the config's own run, 7 epochs in one stage
    assert is_single_stage(one) and stage_config(one, "baseline").train.epochs == 7
    assert is_single_stage(run_config(plan, 1, BUILTIN_ROWS["plain"]))


def _run(seed: int, val: float, test: float) -> dict:
    test_metrics = {"mAP": test, "CF1": 0.0, "OF1": 0.0}
    return {"seed": seed, "val_mAP": val, "test": test_metrics, "curve": [], "minutes": 1.0, "images_per_s": 9.0}


def test_the_report_names_the_plans_head(tmp_path: Path) -> None:
    from sadcl.ablate import AblationPlan, resolve_rows
    from sadcl.ablate.report import guarded_runs, markdown, results_json
    from sadcl.config import load_config

    rows = resolve_rows(["baseline", "sadcl", "straight", "plain"], None)
    runs = {
        "stage1": [_run(1, 60.0, 70.0), _run(2, 60.0, 70.0)],
        "baseline": [_run(1, 61.0, 71.0), _run(2, 61.0, 72.0)],
        "sadcl": [_run(1, 59.0, 73.0), _run(2, 62.0, 75.0)],  # seed 1: no stage-2 epoch beat stage 1 on val
        "straight": [_run(1, 61.0, 70.5), _run(2, 61.0, 70.5)],
        "plain": [_run(1, 60.0, 68.0), _run(2, 60.0, 69.0)],
    }
    runs["sadcl_guarded"] = guarded_runs(runs["stage1"], runs["sadcl"])
    assert [r["kept_stage1"] for r in runs["sadcl_guarded"]] == [True, False]
    ml = AblationPlan(config=None, overrides=["model.head=ml_decoder"], seeds=[1, 2], rows=rows, out=tmp_path)
    data = results_json(ml, runs)
    assert data["rows"]["straight"]["title"] == "ML-Decoder trained straight through, same total epochs"
    assert data["verdict"].startswith("on this data SADCL (on ML-Decoder) changes test mAP by +2.50 [")
    assert "ML-Decoder straight through scores 70.50" in data["verdict"]
    # Shipped: stage 1 on seed 1 (70.0), SADCL on seed 2 (75.0); the plain head 68.0 / 69.0: +2.00 and +6.00.
    assert data["paired"]["sadcl_guarded_vs_plain"]["test_mAP"]["mean"] == pytest.approx(4.0)
    assert "ships 72.50 (stage 1 kept on 1/2; that − the plain head: +4.00 [" in data["verdict"]
    assert "| ML-Decoder trained straight through, same total epochs |" in markdown(ml, runs)
    q2l = AblationPlan(config=None, overrides=[], seeds=[1, 2], rows=rows, out=tmp_path / "q2l")
    assert results_json(q2l, runs)["verdict"].startswith("on this data SADCL changes test mAP by +2.50 [")
    assert results_json(q2l, runs)["rows"]["straight"]["title"].startswith("Query2Label trained straight through")
    # What trained decides, not this invocation's overrides: a seed's saved stage-1 config names the head.
    saved = tmp_path / "q2l" / "seed2" / "stage1" / "config.yaml"
    saved.parent.mkdir(parents=True)
    saved.write_text(yaml.safe_dump(load_config(None, ["model.head=ml_decoder"]).to_dict()))
    assert results_json(q2l, runs)["rows"]["straight"]["title"].startswith("ML-Decoder trained straight through")
    # A report is rebuilt from the runs alone: a config that cannot be read leaves the head unnamed.
    gone = AblationPlan(config=str(tmp_path / "gone.yaml"), overrides=[], seeds=[1], rows=rows, out=tmp_path / "g")
    data = results_json(gone, runs)
    assert data["rows"]["straight"]["title"].startswith("the config's head trained straight through")
    assert data["verdict"].startswith("on this data SADCL changes test mAP by")


def test_rows() -> None:
    assert BUILTIN_ROWS["plain"].kind == "single" and "model.head=linear" in BUILTIN_ROWS["plain"].settings
    assert BUILTIN_ROWS["baseline"].settings[:2] == ("loss.weight_sscl=0.0", "loss.weight_pscl=0.0")
    assert "loss.sscl_min_confidence=null" in BUILTIN_ROWS["baseline"].settings  # pinned: valid across recipes
    for peer in ("csra", "ml_decoder"):  # a label-level head would otherwise train two stages
        assert BUILTIN_ROWS[peer].kind == "single" and "train.single_stage=true" in BUILTIN_ROWS[peer].settings
        assert f"model.head={peer}" in BUILTIN_ROWS[peer].settings
        assert custom_row(f"{peer}2", [f"model.head={peer}"]).kind == "single"  # train.single_stage=true added
    assert custom_row("w30", ["loss.weight_sscl=30"]).kind == "stage2"
    assert custom_row("q2l_one", ["train.single_stage=true"]).kind == "single"
    for bad in (("sadcl", []), ("stage1", []), ("a/b", []), ("w", ["loss.weight_sscl"])):
        with pytest.raises(ValueError):
            custom_row(*bad)
