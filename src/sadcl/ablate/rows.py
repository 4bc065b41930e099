"""The rows of an equal-budget comparison: what each run changes on top of the run configuration.

Two kinds. A **stage-2 row** starts from the seed's shared stage-1 model and prototypes and trains stage 2 with its
settings (``train.epochs`` epochs): the same-budget baseline is stage 2 with both contrastive weights 0, so it differs
from SADCL only in the contrastive terms. A **single-stage row** trains one stage of ``baseline_epochs + epochs``
epochs from the backbone's weights (``train.single_stage``), the same total budget as stage 1 + stage 2 without a
restart: the plain head (``model.head=linear`` on the backbone's last map, ``model.feature_level=-1``: what timm's
classifier gives, whatever truncation the config chose for its query head), the plan's head trained straight through,
and the peers' heads CSRA and ML-Decoder on the last map (opt-in: ``--rows ... csra ml_decoder``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["BUILTIN_ROWS", "DEFAULT_ROWS", "STAGE1", "Row", "custom_row", "head_name", "resolve_rows", "row_title"]

STAGE1 = "stage1"
"""The shared stage-1 run of a seed (a reference row: a shorter budget than every other row)."""


@dataclass(frozen=True)
class Row:
    """One row: its key (the run directory's name), a title, its kind and its config overrides."""

    key: str
    title: str
    kind: Literal["stage2", "single"] = "stage2"
    settings: tuple[str, ...] = ()


BUILTIN_ROWS: dict[str, Row] = {
    r.key: r
    for r in (
        # The SSCL settings cannot matter at weight 0: pinned, so a baseline run stays valid when the recipe's SSCL
        # settings change.
        Row("baseline", "baseline (stage 2, contrastive weights 0: the same budget)", "stage2",
            ("loss.weight_sscl=0.0", "loss.weight_pscl=0.0", "loss.sscl_min_confidence=null")),
        Row("sadcl", "SADCL (the config's recipe)", "stage2"),
        Row("sscl", "+SSCL (PSCL 0)", "stage2", ("loss.weight_pscl=0.0",)),
        Row("pscl", "+PSCL (SSCL 0)", "stage2", ("loss.weight_sscl=0.0",)),
        Row("sadcl_official", "SADCL, official SSCL", "stage2", ("loss.sscl_variant=official",)),
        Row("sadcl_uncalibrated", "SADCL, paper SSCL unscaled, weights 100/50", "stage2",
            ("loss.sscl_anchor_scale=none", "loss.weight_sscl=100.0", "loss.weight_pscl=50.0")),
        Row("plain", "plain head (full backbone, GAP + linear, ASL), one stage, same total epochs", "single",
            ("model.head=linear", "model.feature_level=-1")),
        # The one-stage rows below pin prototype_momentum to null: with it a single stage would train SADCL's terms.
        Row("straight", "{head} trained straight through, same total epochs", "single",
            ("train.single_stage=true", "model.prototype_momentum=null")),
        # The peers' heads as their papers use them: on the backbone's last map, one stage of ASL.
        Row("csra", "CSRA (full backbone, class-specific residual attention, ASL), one stage, same total epochs",
            "single", ("model.head=csra", "model.feature_level=-1", "train.single_stage=true",
                       "model.prototype_momentum=null")),
        Row("ml_decoder", "ML-Decoder (full backbone, one query per class, ASL), one stage, same total epochs",
            "single", ("model.head=ml_decoder", "model.feature_level=-1", "train.single_stage=true",
                       "model.prototype_momentum=null")),
    )
}  # fmt: skip
"""Built-in rows by key."""

DEFAULT_ROWS = ("baseline", "sadcl", "sscl", "pscl", "plain", "straight")
"""What ``sadcl ablate`` runs unless told otherwise."""


def head_name(head: str | None) -> str:
    """How reports name a ``model.head`` value (None: not known yet), so that the row ``straight`` and the verdict
    say which head they trained."""
    names = {"query2label": "Query2Label", "linear": "the plain head", "csra": "CSRA", "ml_decoder": "ML-Decoder"}
    return "the config's head" if head is None else names[head]


def row_title(row: Row, head: str | None) -> str:
    """A row's title; a built-in one names the plan's head (``head``: its ``model.head``) where it trains it."""
    return row.title.replace("{head}", head_name(head)) if BUILTIN_ROWS.get(row.key) == row else row.title


def custom_row(key: str, settings: list[str] | tuple[str, ...]) -> Row:
    """A ``--row NAME KEY=VALUE ...`` row; single-stage when its settings make a run single-stage
    (:func:`sadcl.training.train.is_single_stage`: ``train.single_stage=true`` or a head without label-level features),
    else a stage-2 row. A row that sets ``model.head`` gets ``train.single_stage=true`` (and, unless it sets one,
    ``model.prototype_momentum=null``: ASL only) added: another head cannot start from the plan's shared stage 1 (for
    a head with SADCL's terms, put ``model.head`` in the plan's overrides).

    Raises:
        ValueError: A name that is built in, reserved or not a plain word, or a setting that is not ``KEY=VALUE``.
    """
    if key in BUILTIN_ROWS or key == STAGE1 or not key.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"row name {key!r}: use a new word of letters, digits, '_' or '-' (not a built-in row)")
    bad = [x for x in settings if "=" not in x]
    if bad:
        raise ValueError(f"row {key}: expected KEY=VALUE settings, got {bad}")
    from sadcl.config import load_config
    from sadcl.training.train import is_single_stage  # torch: imported only when a row is made, not for `--help`

    keys = {x.split("=", 1)[0].strip() for x in settings}
    if "model.head" in keys and "train.single_stage=true" not in settings:
        settings = (*settings, "train.single_stage=true")
        if "model.prototype_momentum" not in keys:  # as the built-in head rows: one stage of ASL, not SADCL's terms
            settings = (*settings, "model.prototype_momentum=null")
    single = is_single_stage(load_config(None, list(settings)))
    return Row(key, f"{key} ({' '.join(settings)})", "single" if single else "stage2", tuple(settings))


def resolve_rows(keys: list[str] | None, specs: list[list[str]] | None) -> list[Row]:
    """The rows of ``--rows KEY ...`` (default: :data:`DEFAULT_ROWS` and every custom row) with the custom rows of
    ``--row NAME KEY=VALUE ...`` (``specs``).

    Raises:
        ValueError: An unknown row key, or a bad custom row.
    """
    extra = [custom_row(spec[0], spec[1:]) for spec in specs or []]
    known = {**BUILTIN_ROWS, **{r.key: r for r in extra}}
    keys = keys or [*DEFAULT_ROWS, *(r.key for r in extra)]
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise ValueError(f"--rows: unknown row(s) {unknown}; known: {' '.join(known)}")
    return [known[k] for k in keys]
