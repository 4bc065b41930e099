"""Shipped configs load and validate; config errors name the field; the run config round-trips through YAML."""

from __future__ import annotations

from pathlib import Path

import pytest

from sadcl.config import Config, ConfigError, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_the_paper_and_demo_configs_ship() -> None:
    assert {p.name for p in CONFIGS} >= {
        "mom30_demo.yaml",
        "coco_r101_448.yaml",
        "voc07_r101_448.yaml",
        "nuswide_r101_448.yaml",
    }


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_round_trips(path: Path, tmp_path: Path) -> None:
    cfg = load_config(path)
    cfg.save(tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_paper_recipe_values() -> None:
    cfg = load_config(Path(CONFIGS[0]).parent / "coco_r101_448.yaml")
    assert (cfg.model.backbone, cfg.model.img_size, cfg.model.hidden_dim, cfg.model.dim_feedforward) == (
        "resnet101",
        448,
        2048,
        8192,
    )
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.train.ema_decay) == (5e-5, 5e-3, 0.9998)
    assert (cfg.loss.weight_sscl, cfg.loss.weight_pscl, cfg.train.prototype_threshold) == (100.0, 50.0, 0.85)
    assert cfg.data.test_split != cfg.data.val_split  # never select on the test split


def test_own_data_config_trains_the_measured_ml_decoder_runs() -> None:
    """configs/own_data.yaml is what README recommends for users' data because ML-Decoder won on the emoji study and
    its two stages (phase ``ml_decoder_emoji``) scored above its one stage there: both of its stages must be that
    phase's runs, save the dataset and where they are written."""
    import dataclasses

    from sadcl.training.train import is_single_stage, stage_config
    from support.benchmarks import load_benchmark

    phase = load_benchmark("study").PHASES["ml_decoder_emoji"]
    here = Path(CONFIGS[0]).parent
    own = load_config(here / "own_data.yaml", ["data.root=my_data"])
    measured = load_config(phase["config"], list(phase["set"]))
    assert not is_single_stage(own) and own.train.stage2_guard  # what `sadcl train` ships: stage 2, guarded

    def same_run(c: Config) -> Config:  # what may differ: the data, its class count, the output directory
        return dataclasses.replace(
            c,
            data=dataclasses.replace(c.data, format="-", root=None, options={}),
            model=dataclasses.replace(c.model, num_classes=None),
            train=dataclasses.replace(c.train, output_dir="-"),
        )

    for stage in ("baseline", "sadcl"):
        a, b = stage_config(own, stage), stage_config(measured, stage)
        assert same_run(a) == same_run(b), stage
    assert (own.data.format, own.model.num_classes, measured.data.format) == ("manifest", None, "emoji")
    one, two = stage_config(own, "baseline"), stage_config(own, "sadcl")
    assert (one.model.head, one.model.feature_level, one.train.epochs, one.loss.gamma_neg) == ("ml_decoder", -1, 4, 4.0)
    assert (two.model.contrastive, two.loss.weight_sscl, two.loss.weight_pscl, two.train.epochs) == (True, 100, 5, 3)


def test_packaged_default_is_the_demo_config() -> None:
    from sadcl.cli.train import default_config_path

    assert load_config(default_config_path()) == load_config(Path(CONFIGS[0]).parent / "mom30_demo.yaml")


@pytest.mark.parametrize(
    "override, field",
    [
        ("train.epochs=0", "train.epochs"),
        ("model.nhead=3", "model.nhead"),
        ("optim.lr=fast", "optim.lr"),
        ("data.batchsize=4", "data.batchsize"),
        ("data.val_holdout=-1", "data.val_holdout"),
    ],
)
def test_bad_values_name_the_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field.split(".")[-1]):
        load_config(None, [override])


def test_config_kwargs_takes_matching_fields_and_given_values_win() -> None:
    import dataclasses

    from sadcl.config import config_kwargs
    from sadcl.losses import AsymmetricLoss
    from sadcl.models import SADCL

    cfg = dataclasses.replace(Config().model, dec_layers=3, bank_threshold=0.5)
    kwargs = config_kwargs(SADCL, cfg, backbone="given")
    assert kwargs["dec_layers"] == 3 and kwargs["bank_threshold"] == 0.5 and kwargs["backbone"] == "given"
    assert "img_size" not in kwargs and "pretrained_file" not in kwargs  # not SADCL parameters
    loss = dataclasses.replace(Config().loss, gamma_neg=2.5)
    assert config_kwargs(AsymmetricLoss, loss) == {
        "gamma_neg": 2.5,
        "gamma_pos": loss.gamma_pos,
        "clip": loss.clip,
        "eps": loss.eps,
        "detach_focal_weight": loss.detach_focal_weight,
    }
