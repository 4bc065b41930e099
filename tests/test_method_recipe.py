"""The SADCL recipe controls of issue #10: SSCL strength calibration, per-stage settings, EMA warm-up, prototype
health, training diagnostics, MOM-30 variants and the study script's override precedence."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sadcl.config import ConfigError, DataConfig, load_config
from sadcl.data import mom30
from sadcl.data.mom30 import default_params, generate_mom30, params_dirname, read_meta
from sadcl.data.mom30_render import Renderer
from sadcl.losses import AsymmetricLoss, SSCLoss, build_criterion
from sadcl.losses.sscl import official_anchor_fraction
from sadcl.training.ema import ModelEma
from sadcl.training.engine import gradient_shares
from sadcl.training.prototypes import prototype_health, prototypes_from_features
from sadcl.training.train import STAGE1_SETTINGS, STAGE2_ONLY, stage_config
from support.benchmarks import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


def _labels(b: int, c: int, p: float, seed: int) -> torch.Tensor:
    return (torch.rand(b, c, generator=torch.Generator().manual_seed(seed)) < p).double()


def _brute_force_fraction(labels: torch.Tensor) -> float:
    """The official loop, row by row: row a of class c is activated by y[a mod B, c] and kept by y[floor(a/2), c]."""
    b, c = labels.shape
    kept = active = 0
    for a in range(2 * b):
        for k in range(c):
            if labels[a % b, k] > 0:
                active += 1
                kept += int(labels[a // 2, k] > 0)
    return kept / active


# ------------------------------------------------------------------------------------------------- SSCL strength
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_anchor_fraction_matches_the_official_mask(seed: int) -> None:
    labels = _labels(16, 12, 0.2, seed)
    assert float(official_anchor_fraction(labels)) == pytest.approx(_brute_force_fraction(labels), abs=1e-7)
    assert float(official_anchor_fraction(torch.zeros(4, 3))) == 1.0


def test_calibrated_paper_is_the_plain_paper_loss_times_the_kept_fraction() -> None:
    feats = torch.randn(16, 2, 12, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    labels = _labels(16, 12, 0.2, 4)
    plain = SSCLoss(variant="paper", anchor_scale="none")(feats, labels)
    scaled = SSCLoss(variant="paper", anchor_scale="official")(feats, labels)
    rho = _brute_force_fraction(labels)
    assert 0.05 < rho < 0.6  # the official mask really drops most rows at this density
    assert float(scaled) == pytest.approx(rho * float(plain), rel=1e-12)


def test_calibrated_paper_has_the_official_gradient_when_the_masks_agree() -> None:
    """With identical label rows the official mask keeps every row (rho = 1): the calibrated paper loss then has the
    official loss's gradient (the official value carries detached shifts, its gradient does not), so one weight means
    one strength in both variants."""
    feats = torch.randn(8, 2, 6, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    labels = torch.tensor([[1.0, 0, 1, 0, 0, 1]], dtype=torch.float64).repeat(8, 1)
    assert float(official_anchor_fraction(labels)) == 1.0
    grads = {}
    for variant in ("paper", "official"):
        x = feats.clone().requires_grad_(True)
        SSCLoss(variant=variant, anchor_scale="official")(x, labels).backward()
        grads[variant] = x.grad
    torch.testing.assert_close(grads["paper"], grads["official"], rtol=1e-4, atol=1e-7)


def test_official_variant_ignores_the_anchor_scale() -> None:
    feats = torch.randn(8, 2, 6, 5, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    labels = _labels(8, 6, 0.4, 7)
    a = SSCLoss(variant="official", anchor_scale="official")(feats, labels)
    b = SSCLoss(variant="official", anchor_scale="none")(feats, labels)
    assert torch.equal(a, b)


def test_config_default_is_the_calibrated_strength() -> None:
    cfg = load_config(None)
    assert cfg.loss.sscl_anchor_scale == "official"
    assert build_criterion(cfg.loss).sscl.anchor_scale == "official"
    with pytest.raises(ConfigError, match="sscl_anchor_scale"):
        load_config(None, ["loss.sscl_anchor_scale=half"])


# ------------------------------------------------------------------------------------------- per-stage settings
def test_stage_one_takes_its_own_settings_and_stage_two_the_loss_section() -> None:
    cfg = load_config(
        None,
        [
            "loss.gamma_neg=0",
            "loss.gamma_pos=1",
            "loss.clip=0.05",
            "optim.lr=0.0001",
            "train.ema_decay=0.999",
            "train.early_stop_patience=2",
            "train.baseline_gamma_neg=4",
            "train.baseline_gamma_pos=0",
            "train.baseline_clip=0",
            "train.baseline_lr=0.0003",
            "train.baseline_ema_decay=0.99",
            "train.baseline_early_stop_patience=5",
            "train.baseline_epochs=7",
            "train.epochs=3",
        ],
    )
    s1, s2 = stage_config(cfg, "baseline"), stage_config(cfg, "sadcl")
    assert (s1.loss.gamma_neg, s1.loss.gamma_pos, s1.loss.clip) == (4.0, 0.0, 0.0)
    assert (s2.loss.gamma_neg, s2.loss.gamma_pos, s2.loss.clip) == (0.0, 1.0, 0.05)
    assert (s1.optim.lr, s2.optim.lr) == (3e-4, 1e-4)
    assert (s1.train.ema_decay, s2.train.ema_decay) == (0.99, 0.999)
    assert (s1.train.early_stop_patience, s2.train.early_stop_patience) == (5, 2)
    assert (s1.train.epochs, s2.train.epochs) == (7, 3)
    asl1, asl2 = build_criterion(s1.loss, contrastive=False).asl, build_criterion(s2.loss).asl
    assert (asl1.gamma_neg, asl2.gamma_neg, asl2.gamma_pos, asl2.clip) == (4.0, 0.0, 1.0, 0.05)
    # Unset stage-1 values fall back to the shared ones.
    plain = load_config(None, ["train.baseline_gamma_neg=null", "loss.gamma_neg=2", "optim.lr=0.0002"])
    assert stage_config(plain, "baseline").loss.gamma_neg == 2.0 and stage_config(plain, "baseline").optim.lr == 2e-4


def test_default_recipe_is_the_val_selected_one() -> None:
    # BENCHMARKS.md study sweep and phase 5: stage 1 ASL gamma_neg 4, stage 2 BCE + calibrated paper SSCL 100 + PSCL 5.
    for cfg in (load_config(None), load_config(ROOT / "configs" / "mom30_demo.yaml")):
        s1, s2 = stage_config(cfg, "baseline"), stage_config(cfg, "sadcl")
        assert (s1.loss.gamma_neg, s2.loss.gamma_neg) == (4.0, 0.0)
        assert (s2.loss.sscl_variant, s2.loss.sscl_anchor_scale) == ("paper", "official")
        assert (s2.loss.weight_sscl, s2.loss.weight_pscl) == (100.0, 5.0)
        assert s2.loss.sscl_min_confidence == 0.5  # the val-best of issue #27's four recipes on both benchmarks
    for paper in ("coco_r101_448", "voc07_r101_448", "nuswide_r101_448", "mom30_study"):  # official: every positive
        assert load_config(ROOT / "configs" / f"{paper}.yaml").loss.sscl_min_confidence is None


def test_coco_config_reproduces_the_logged_objective() -> None:
    cfg = load_config(ROOT / "configs" / "coco_r101_448.yaml")
    s1, s2 = stage_config(cfg, "baseline"), stage_config(cfg, "sadcl")
    assert (s1.loss.gamma_neg, s1.loss.gamma_pos, s1.loss.clip) == (4.0, 0.0, 0.0)  # logged stage 1
    assert (s2.loss.gamma_neg, s2.loss.gamma_pos, s2.loss.clip) == (0.0, 0.0, 0.0)  # logged stage 2: BCE
    assert s2.loss.sscl_variant == "official" and (s2.loss.weight_sscl, s2.loss.weight_pscl) == (100.0, 50.0)


def test_bad_stage_settings_name_the_field() -> None:
    with pytest.raises(ConfigError, match="train.baseline_ema_decay"):
        load_config(None, ["train.baseline_ema_decay=1.5"])
    with pytest.raises(ConfigError, match="train.baseline_lr"):
        load_config(None, ["train.baseline_lr=0"])


def test_every_setting_is_accounted_for_by_stage() -> None:
    cfg = load_config(None)
    keys = {f"{s.name}.{f.name}" for s in dataclasses.fields(cfg) for f in dataclasses.fields(getattr(cfg, s.name))}
    # Stage 1's own keys are exactly the train.baseline_* keys, each resolved onto an existing shared setting.
    assert {k for k in keys if k.startswith("train.baseline_")} == set(STAGE1_SETTINGS)
    assert set(STAGE1_SETTINGS.values()) <= keys and set(STAGE2_ONLY) <= keys
    assert not set(STAGE2_ONLY) & (set(STAGE1_SETTINGS) | set(STAGE1_SETTINGS.values()))
    # Every loss setting is read by stage 1's criterion (ASL, its weight, unknown labels) or is stage-2 only: a new
    # contrastive setting missing from STAGE2_ONLY would make every stage-2 row refuse its shared stage 1.
    stage1_loss = {f"loss.{p}" for p in inspect.signature(AsymmetricLoss).parameters} | {
        "loss.asl_reduction",
        "loss.weight_asl",
        "loss.unknown_mode",
    }
    loss_keys = {k for k in keys if k.startswith("loss.")}
    assert loss_keys <= stage1_loss | set(STAGE2_ONLY), loss_keys - stage1_loss - set(STAGE2_ONLY)
    # The weights of the terms stage 1 does not have are stage-2 settings too (stage_config keeps them, unread).
    assert {"loss.weight_sscl", "loss.weight_pscl"} <= set(STAGE2_ONLY) | stage1_loss


# -------------------------------------------------------------------------------------------------- EMA warm-up
def test_ema_warmup_follows_the_model_early_and_the_decay_later() -> None:
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    plain, warm = ModelEma(model, decay=0.999), ModelEma(model, decay=0.999, warmup=True)
    with torch.no_grad():
        model.weight.fill_(1.0)
    expect = 0.0
    for t in range(50):
        plain.update(model)
        warm.update(model)
        d = min(0.999, (1 + t) / (10 + t))
        expect = d * expect + (1 - d)
    assert warm.updates == 50
    assert float(warm.module.weight) == pytest.approx(expect, rel=1e-6)
    assert float(warm.module.weight) > 0.8 > 0.1 > float(plain.module.weight)


# ------------------------------------------------------------------------------------------- prototype health
def _proto_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(40, 3, 4, generator=g) + torch.tensor([[3.0], [0.0], [-3.0]])
    targets = torch.zeros(40, 3)
    targets[:20, 0] = 1
    targets[10:30, 1] = 1  # class 1: positives, but never confident
    logits = torch.full((40, 3), -5.0)
    logits[:20, 0] = 5.0
    return feats, logits, targets


def test_a_class_without_a_confident_positive_falls_back_to_its_positive_mean() -> None:
    feats, logits, targets = _proto_inputs()
    protos, counts = prototypes_from_features(feats, logits, targets, threshold=0.85, class_names=["a", "b", "c"])
    assert counts["fallback"] == ["b"] and counts["absent"] == ["c"]
    torch.testing.assert_close(protos[1], feats[10:30, 1].mean(0))
    assert protos[1].norm() > 0 and torch.equal(protos[2], torch.zeros(4))
    health = prototype_health(protos, ["a", "b", "c"])
    assert health["zero"] == ["c"]


def test_fallback_error_names_the_classes() -> None:
    feats, logits, targets = _proto_inputs()
    with pytest.raises(ValueError, match=r"1 of 3 classes .*: b\. "):
        prototypes_from_features(feats, logits, targets, threshold=0.85, fallback="error", class_names=["a", "b", "c"])


def test_near_zero_rows_are_reported() -> None:
    protos = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.01, 0.0], [0.0, 0.0]])
    health = prototype_health(protos, ["w", "x", "y", "z"])
    assert health["zero"] == ["z"] and health["near_zero"] == ["y"]


# -------------------------------------------------------------------------------------------------- diagnostics
def test_gradient_shares_add_up_and_match_manual_norms() -> None:
    torch.manual_seed(0)
    trunk = nn.Linear(4, 4)
    x = torch.randn(8, 4)
    h = trunk(x)
    terms = {"asl": h.pow(2).mean(), "sscl": h.sum(), "pscl": (h * 0).sum()}
    out = gradient_shares(terms, {"asl": 1.0, "sscl": 3.0, "pscl": 0.0}, list(trunk.parameters()))
    assert "grad_share_pscl" not in out  # weight 0: not a contributor
    assert out["grad_share_asl"] + out["grad_share_sscl"] == pytest.approx(1.0)
    g = torch.autograd.grad(3.0 * terms["sscl"], list(trunk.parameters()), retain_graph=True)
    assert out["grad_norm_sscl"] == pytest.approx(float(torch.cat([t.reshape(-1) for t in g]).norm()), rel=1e-5)
    assert -1.0 <= out["grad_cos_asl_contrastive"] <= 1.0
    terms["asl"].backward()  # the graph was kept for the real backward


# -------------------------------------------------------------------------------------------------- MOM-30 options
def test_default_parameters_keep_their_cache_key() -> None:
    params = default_params(size=64, n_train=4000, n_val=500, n_test=1000, seed=0)
    assert params_dirname(params) == "s64-tr4000-va500-te1000-seed0-v1"
    # Passing a default value explicitly is the same dataset.
    assert (
        default_params(
            size=64, n_train=4000, n_val=500, n_test=1000, seed=0, photo_p=0.6, objects_p=[0.15, 0.35, 0.30, 0.20]
        )
        == params
    )


def test_variant_options_enter_the_cache_key() -> None:
    base = dict(size=64, n_train=10, n_val=2, n_test=2, seed=0)
    keys = {
        params_dirname(default_params(**base, **v))
        for v in (
            {},
            {"photo_p": 0.2},
            {"photo_p": 0.3},
            {"swap_photos": True},
            {"object_size": [10, 20]},
            {"objects_p": [0, 0, 1]},
        )
    }
    assert len(keys) == 6
    data = DataConfig(format="mom30", options={**base, "photo_p": 0.2})
    assert mom30.dataset_dir(data).name == params_dirname(default_params(**base, photo_p=0.2))


@pytest.mark.parametrize(
    "bad", [{"photo_p": 2}, {"objects_p": [-1, 2]}, {"object_size": [30, 10]}, {"swap_photos": "yes"}]
)
def test_bad_variant_options_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError, match="MOM-30"):
        default_params(**bad)


def test_variants_render_what_they_say() -> None:
    three = Renderer(size=64, seed=0, objects_p=[0, 0, 1], object_size=[10, 12])
    for i in range(6):
        _, rec = three.render("train", i)
        assert len(rec["labels"]) == 3
        for x0, y0, x1, y1, _ in rec["boxes"]:
            assert max(x1 - x0, y1 - y0) <= 12
    plain = Renderer(size=64, seed=0, photo_p=1.0)
    swapped = Renderer(size=64, seed=0, photo_p=1.0, swap_photos=True)
    a, b = plain.render("test", 0)[0], swapped.render("test", 0)[0]
    assert not np.array_equal(a, b)  # another background photo behind the same draw
    np.testing.assert_array_equal(plain.render("test", 0)[0], a)  # deterministic


def test_variant_generation_is_deterministic_and_recorded(tmp_path: Path) -> None:
    opts = dict(size=64, n_train=6, n_val=2, n_test=2, seed=0, photo_p=0.0, objects_p=[1, 1])
    a, b = (
        generate_mom30(tmp_path / "a", progress=False, **opts),
        generate_mom30(tmp_path / "b", progress=False, **opts),
    )
    for rel in ("train.jsonl", "images/train/000003.png", "images/test/000001.png"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    meta = read_meta(a)
    assert meta["params"]["photo_p"] == 0.0 and meta["params"]["objects_p"] == [0.5, 0.5]
    with pytest.raises(ValueError, match="other parameters"):
        generate_mom30(a, progress=False, **{**opts, "photo_p": 0.5})


def test_cli_flags_reach_the_generator(tmp_path: Path) -> None:
    from sadcl.cli import main

    rc = main(
        [
            "data",
            "mom30",
            "--out",
            str(tmp_path / "v"),
            "--n-train",
            "4",
            "--n-val",
            "2",
            "--n-test",
            "2",
            "--objects-p",
            "0",
            "1",
            "--photo-p",
            "0",
            "--swap-photos",
            "--object-size",
            "16",
            "20",
            "--no-progress",
        ]
    )
    assert rc == 0
    params = read_meta(tmp_path / "v")["params"]
    assert params["objects_p"] == [0.0, 1.0] and params["photo_p"] == 0.0 and params["swap_photos"] is True
    assert params["object_size"] == [16.0, 20.0]
    lines = (tmp_path / "v" / "train.jsonl").read_text().splitlines()
    assert all(len(json.loads(line)["labels"]) == 2 for line in lines)


# ----------------------------------------------------------------------------------------------- study script
def test_a_rows_own_settings_win_over_set(tmp_path: Path) -> None:
    """``--set`` changes every run, but never what a row is defined by (the baseline's zero weights)."""
    from sadcl.ablate.runner import run_config

    ab = load_benchmark("ablation")
    args = ab.parse_args(
        ["--out", str(tmp_path), "--set", "loss.weight_pscl=7", "--row", "w30", "loss.weight_sscl=30", "optim.lr=0.01"]
    )
    rows = {r.key: r for r in args.plan.rows}
    cfg = run_config(args.plan, 0, rows["w30"])
    assert (cfg.loss.weight_sscl, cfg.loss.weight_pscl, cfg.optim.lr) == (30.0, 7.0, 0.01)
    base = run_config(args.plan, 0, rows["baseline"])
    assert base.loss.weight_sscl == 0.0 and base.loss.weight_pscl == 0.0 and not base.train.stage2_guard
    assert "w30" in rows and "plain" in rows


def test_without_benchmarks_md_nothing_committed_is_written(tmp_path: Path) -> None:
    ab = load_benchmark("ablation")
    before = {p: p.stat().st_mtime for p in (ROOT / "benchmarks" / "results").iterdir()}
    args = ab.parse_args(["--out", str(tmp_path), "--section", "ablation_emoji", "--report-only"])
    assert ab.main(["--out", str(tmp_path), "--section", "ablation_emoji", "--report-only"]) == 0
    assert {p: p.stat().st_mtime for p in (ROOT / "benchmarks" / "results").iterdir()} == before
    assert (tmp_path / "BENCHMARKS.md").is_file() and (tmp_path / "ablation_emoji.json").is_file()
    assert "No comparable runs have finished yet." in (tmp_path / "BENCHMARKS.md").read_text()
    assert args.plan.out == tmp_path


def test_val_curves_join_the_validated_epochs_only() -> None:
    from sadcl.ablate.report import validated_mean

    nan = float("nan")
    # val_interval 2: epochs 1 and 3 carry no val mAP; seed 2 also missed epoch 2, and stopped after 4 epochs.
    epochs, mean = validated_mean([[nan, 70.0, nan, 80.0, 81.0], [nan, nan, nan, 78.0]])
    assert epochs.tolist() == [2, 4]
    assert mean.tolist() == [70.0, 79.0]
    epochs, mean = validated_mean([[nan, 1.0]])
    assert epochs.tolist() == [2] and mean.tolist() == [1.0]


def test_paired_stats_against_scipy() -> None:
    from scipy import stats

    from sadcl.ablate import paired_stats

    d = [0.5, 1.2, -0.3, 0.9, 1.1, 0.4, 0.8, 0.2]
    st = paired_stats(d)
    ci = stats.t.interval(0.95, len(d) - 1, loc=np.mean(d), scale=stats.sem(d))
    assert st["ci95_low"] == pytest.approx(ci[0]) and st["ci95_high"] == pytest.approx(ci[1])
    assert st["p"] == pytest.approx(stats.ttest_rel(np.array(d) + 1, np.ones(len(d))).pvalue)


def test_stage_one_runs_stay_valid_when_only_stage_two_settings_change() -> None:
    from sadcl.training.train import changed_settings

    base = load_config(ROOT / "configs" / "mom30_study.yaml")
    recipe = load_config(
        ROOT / "configs" / "mom30_study.yaml",
        ["loss.weight_sscl=30", "loss.gamma_neg=2", "optim.lr=0.00005", "train.progress=false"],
    )
    assert changed_settings(base, recipe, ("baseline",)) == []  # stage 1 has its own gamma_neg and lr
    assert {c.split(":")[0] for c in changed_settings(base, recipe)} == {
        "loss.weight_sscl",
        "loss.gamma_neg",
        "optim.lr",
    }
    shared = load_config(None, ["optim.lr=0.0002"])  # no train.baseline_lr: the lr is stage 1's too
    assert [c.split(":")[0] for c in changed_settings(load_config(None), shared, ("baseline",))] == ["optim.lr"]


def test_each_study_phase_runs_its_own_config_unless_one_is_given() -> None:
    study = load_benchmark("study")

    def argv(phase: str, config: str | None = None) -> list[str]:
        flags = {"out": "runs/study", "seeds": None, "set": None, "publish": False, "report_only": False}
        return study.phase_argv(phase, argparse.Namespace(config=config, **flags))

    def value(args: list[str], flag: str) -> str:
        return args[args.index(flag) + 1]

    assert Path(value(argv("decisive"), "--config")) == ROOT / "configs" / "mom30_study.yaml"
    demo = argv("demo")
    assert Path(value(demo, "--config")) == ROOT / "configs" / "mom30_demo.yaml"  # the regime users run
    assert value(argv("demo", "mine.yaml"), "--config") == "mine.yaml"
    seeds = demo[demo.index("--seeds") + 1 : demo.index("--section")]
    assert seeds == [str(s) for s in range(1, 9)]  # 8 paired seeds; seed 1 is make demo's run
    rows = demo[demo.index("--rows") + 1 :]
    ideas = [r[0] for r in study.IDEA_ROWS]  # issue #27's ideas, on both benchmarks
    assert rows[: rows.index("--carry-from")] == [
        "baseline",
        "sadcl",
        "sscl_allpos",
        "sadcl_p50",
        "pscl_p50",
        *ideas,
        "plain",
    ]
    for phase in ("demo", "emoji"):  # each idea row is defined (--row NAME KEY=VALUE ...) where it is run
        args = argv(phase)
        for r in study.IDEA_ROWS:
            assert any(args[i : i + len(r) + 1] == ["--row", *r] for i in range(len(args))), (phase, r)
    heads = argv("heads_emoji")
    assert value(heads, "--section") == "heads_emoji" and value(heads, "--out") == str(Path("runs/study") / "emoji")
    emoji = argv("emoji")
    assert Path(value(emoji, "--config")) == ROOT / "configs" / "emoji.yaml" and value(emoji, "--section") == (
        "ablation_emoji"
    )
