"""The two-stage SADCL run (docs/spec.md §3): stage 1 (baseline), category prototypes, stage 2 (SADCL), each resumable.

Run directory (``train.output_dir``)::

    config.yaml              the full configuration of the run
    baseline/                stage 1: last.pt (resume state), best.pt (selected on val), metrics.json, results.json, tb/
    prototypes.npy           [C, d] from the stage-1 best model on the training split (+ prototypes.json: counts)
    sadcl/                   stage 2, same files
    results.json             test metrics of both stages

Model selection uses the validation split only; the selected model (the better of the EMA and the regular weights,
as official) is then evaluated once on the test split. Under ``torchrun`` every rank runs this same code: rank 0 logs
and writes files, every rank resumes from the same checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from sadcl import distributed as D
from sadcl.config import Config, ConfigError, config_diff
from sadcl.data.image_cache import image_cache_scope
from sadcl.io import LockHeldError, atomic_write_text, file_lock, read_json
from sadcl.training.prototypes import build_run_prototypes
from sadcl.training.stage import train_stage
from sadcl.training.stage_log import StepHook

__all__ = [
    "STAGES",
    "StepHook",
    "changed_settings",
    "is_single_stage_sadcl",
    "is_single_stage",
    "run_training",
    "saved_run_config",
    "stage_config",
    "train_stage",
]

STAGES = ("baseline", "sadcl")
"""Stage names, in run order; also the sub-directories of the run directory."""

RESUME_MAY_CHANGE = (
    "train.device",
    "train.progress",
    "train.tensorboard",
    "train.log_interval",
    "train.output_dir",
    "data.workers",
    "data.cache_images",
    "data.eval_batch_size",
    "data.options.progress",
    "data.options.workers",
)
"""Settings a resumed run may change: where and how verbosely it runs, not what it computes."""

STAGE2_ONLY = (
    "train.stage2_guard",
    "loss.weight_sscl",
    "loss.weight_pscl",
    "loss.sscl_variant",
    "loss.sscl_anchor_scale",
    "loss.sscl_temperature",
    "loss.sscl_min_confidence",
    "loss.contrastive_warmup",
    "loss.pscl_temperature",
    "model.proj_dim",
    "model.bank_slots",
    "model.bank_threshold",
    "model.prototype_momentum",
    "model.prototypes",
    "train.prototype_threshold",
    "train.prototype_rule",
    "train.prototype_fallback",
)
"""Settings stage 1 never reads (a stage-1 run stays valid when only these change). A single stage with SADCL's terms
(:func:`is_single_stage_sadcl`) reads all but :data:`TWO_STAGE_ONLY`."""

TWO_STAGE_ONLY = ("train.stage2_guard", "train.prototype_threshold", "train.prototype_rule", "train.prototype_fallback")
"""What only the two-stage recipe reads: the guard and the prototype pass between the stages."""

STAGE1_SETTINGS: dict[str, str] = {
    "train.baseline_epochs": "train.epochs",
    "train.baseline_gamma_neg": "loss.gamma_neg",
    "train.baseline_gamma_pos": "loss.gamma_pos",
    "train.baseline_clip": "loss.clip",
    "train.baseline_lr": "optim.lr",
    "train.baseline_ema_decay": "train.ema_decay",
    "train.baseline_early_stop_patience": "train.early_stop_patience",
    "train.baseline_train_preset": "data.train_preset",
}
"""Stage 1's own settings, the one place they are resolved (:func:`stage_config`): each ``train.baseline_*`` key,
when set (not null), replaces the setting it maps to for stage 1; stage 2 reads the mapped setting as written.
Every other setting is read by both stages alike, except :data:`STAGE2_ONLY` (a test checks every key is one of
the three)."""


def _setting(cfg: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def _with_setting(cfg: Config, key: str, value: Any) -> Config:
    section, name = key.split(".")
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **{name: value})})


def saved_run_config(path: Path) -> Config:
    """A run's saved ``config.yaml``; one written before ``loss.sscl_anchor_scale`` existed trained with ``none``."""
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    if isinstance(data.get("loss"), dict) and "sscl_anchor_scale" not in data["loss"]:
        data["loss"]["sscl_anchor_scale"] = "none"
    return Config.from_dict(data, str(path))


def changed_settings(saved: Config, cfg: Config, stages: Sequence[str] = STAGES) -> list[str]:
    """What differs between a run's saved configuration and ``cfg``, for the given stages (``key: old -> new``).

    Where and how verbosely a run goes (``RESUME_MAY_CHANGE``) never counts; with stage 1 alone, neither do the
    settings only stage 2 reads, compared through :func:`stage_config` (so stage-1 values are the effective ones); a
    single stage with SADCL's terms compares everything but :data:`TWO_STAGE_ONLY` that way.
    """
    if "sadcl" in stages:
        return config_diff(saved, cfg, ignore=RESUME_MAY_CHANGE)
    unread = TWO_STAGE_ONLY if is_single_stage_sadcl(saved) or is_single_stage_sadcl(cfg) else STAGE2_ONLY
    return config_diff(
        stage_config(saved, "baseline"), stage_config(cfg, "baseline"), ignore=(*RESUME_MAY_CHANGE, *unread)
    )


def stage_config(cfg: Config, stage: str, *, prototypes: str | None = None) -> Config:
    """The configuration one stage actually runs with.

    Stage 1 is the baseline: ``model.contrastive=False`` and every ``train.baseline_*`` value that is set replaces
    the setting :data:`STAGE1_SETTINGS` maps it to (epochs, ASL gamma_neg/gamma_pos/clip, lr, EMA decay, early-stop
    patience, train preset). A single-stage run (:func:`is_single_stage`) is that stage for ``baseline_epochs +
    epochs`` epochs, with SADCL's terms when its prototypes follow the model (:func:`is_single_stage_sadcl`).
    Stage 2 is SADCL with the given prototypes file and the configuration as written.
    """
    if stage == "baseline":
        single = is_single_stage(cfg)
        contrastive = is_single_stage_sadcl(cfg)  # prototypes from a file, if given, are where they start
        prototypes = cfg.model.prototypes if contrastive else None
        model = dataclasses.replace(cfg.model, contrastive=contrastive, prototypes=prototypes)
        out = dataclasses.replace(cfg, model=model)
        for own, shared in STAGE1_SETTINGS.items():
            value = _setting(cfg, own)
            if value is not None:
                out = _with_setting(out, shared, value)
        if single:  # the whole run's budget in this one stage
            out = _with_setting(out, "train.epochs", out.train.epochs + cfg.train.epochs)
        return out
    if stage == "sadcl":
        model = dataclasses.replace(cfg.model, contrastive=True, prototypes=prototypes or cfg.model.prototypes)
        return dataclasses.replace(cfg, model=model)
    raise ValueError(f"unknown stage {stage!r}; valid: {', '.join(STAGES)}")


def is_single_stage(cfg: Config) -> bool:
    """Whether the run trains one stage: ``train.single_stage``, or a head without label-level features (``linear``,
    grouped ``ml_decoder``: :attr:`~sadcl.config.ModelConfig.has_label_features`)."""
    return cfg.train.single_stage or not cfg.model.has_label_features


def is_single_stage_sadcl(cfg: Config) -> bool:
    """Whether a single-stage run trains SADCL's terms from its first step (issue #27's idea, no restart): prototypes
    that follow the model (``model.prototype_momentum``) need no stage 1 to be computed from, so ``train.single_stage``
    with a momentum set (and ``model.contrastive``, on a head with label-level features) keeps SSCL and PSCL on; the
    prototypes start random (or from ``model.prototypes``) and follow the features (``loss.contrastive_warmup`` ramps
    the terms in). The run's one stage is its ``baseline`` directory, as for every single-stage run."""
    return (
        cfg.train.single_stage
        and cfg.model.contrastive
        and cfg.model.has_label_features
        and cfg.model.prototype_momentum is not None
    )


def run_training(
    cfg: Config,
    *,
    stages: Sequence[str] = STAGES,
    resume: bool = False,
    baseline_checkpoint: str | Path | None = None,
    hook: StepHook | None = None,
) -> dict[str, Any]:
    """Run the stages of a SADCL training in one call (single process or under ``torchrun``).

    Args:
        cfg: The run configuration; ``cfg.train.output_dir`` is the run directory.
        stages: Which stages to run (``("baseline",)``, ``("sadcl",)`` or both).
        resume: Continue from the ``last.pt`` of each stage (a finished stage is skipped, its results reused).
            Without it, a stage directory that already holds a checkpoint is an error: nothing is overwritten.
        baseline_checkpoint: Stage-2 initialisation when stage 1 is not run here (default: ``baseline/best.pt`` of
            the run directory).
        hook: Called after every optimizer step (tests use it to interrupt a run).

    Returns:
        ``{stage: results}`` where results hold ``best_epoch``, ``selected``, ``val`` and ``test`` metrics. A
        single-stage run (:func:`is_single_stage`) trains the ``baseline`` stage only, for the whole budget.
    """
    out = Path(cfg.train.output_dir)
    if is_single_stage(cfg):
        if "sadcl" in stages and "baseline" not in stages:
            raise ConfigError(
                "stage 2 (SADCL) needs label-level features and two stages: model.head=query2label, csra, or "
                f"ml_decoder with full decoding, and no train.single_stage; this run has model.head={cfg.model.head}, "
                f"model.ml_decoder_groups={cfg.model.ml_decoder_groups}, train.single_stage={cfg.train.single_stage}"
            )
        stages = ("baseline",)
    with _run_dir_lock(out), image_cache_scope():  # one run per directory; decoded images freed for the caller
        _check_run_dir(cfg, out, stages=stages, resume=resume)  # before anything else is written
        info = D.init_distributed(device=cfg.train.device)
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            cfg.save(out / "config.yaml")
        results: dict[str, Any] = (read_json(out / "results.json") or {}) if info.is_main else {}
        if "baseline" in stages:  # stage 1: the baseline (or the one stage, with SADCL's terms when they follow)
            results["baseline"] = train_stage(
                stage_config(cfg, "baseline"), out / "baseline", info=info, resume=resume, hook=hook
            )
        if "sadcl" in stages:  # prototypes from the stage-1 model, then stage 2 starts from its weights
            init = Path(baseline_checkpoint) if baseline_checkpoint else out / "baseline" / "best.pt"
            protos = build_run_prototypes(cfg, init, out=out / "prototypes.npy", device=info.device, reuse=resume)
            results["sadcl"] = train_stage(
                stage_config(cfg, "sadcl", prototypes=str(protos)),
                out / "sadcl",
                info=info,
                resume=resume,
                init_weights=init,
                hook=hook,
            )
        if info.is_main:
            atomic_write_text(out / "results.json", json.dumps(results, indent=2))
        return results


@contextmanager
def _run_dir_lock(out: Path) -> Iterator[None]:
    """Hold ``out/.sadcl-train.lock`` for the run (rank 0 only: a torchrun job is one run): a second ``sadcl train``
    into the same directory fails at once with one line instead of overwriting the first run's checkpoints."""
    if D.launched_by_torchrun() and int(os.environ["RANK"]) != 0:
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    lock = out / ".sadcl-train.lock"
    with ExitStack() as held:
        try:
            held.enter_context(file_lock(lock, wait=False))
        except LockHeldError:
            raise LockHeldError(
                f"{out} is in use: another `sadcl train` run holds its lock ({lock.name}); wait for that run to "
                "end, or choose another --output-dir"
            ) from None
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)  # the run is over (still held here): no file left in the run directory


def _check_run_dir(cfg: Config, out: Path, *, stages: Sequence[str], resume: bool) -> None:
    """Refuse unknown stages, a started run without ``resume``, and a resume with another configuration."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise ValueError(f"unknown stage(s) {unknown}; valid: {', '.join(STAGES)}")
    if not resume:
        taken = [str(out / s / "last.pt") for s in stages if (out / s / "last.pt").is_file()]
        if taken:
            raise FileExistsError(
                f"{', '.join(taken)} exists: pass --resume to continue that run, or choose another "
                "train.output_dir (nothing was overwritten)"
            )
    started = tuple(s for s in stages if (out / s / "last.pt").is_file())
    if resume and started and (out / "config.yaml").is_file():
        changed = changed_settings(saved_run_config(out / "config.yaml"), cfg, started)
        if changed:
            raise ConfigError(
                f"--resume: {out / 'config.yaml'} was trained with another configuration "
                f"({'; '.join(changed)}); resume with the same settings, or start a new "
                "train.output_dir (nothing was written)"
            )
