"""The two-stage SADCL run (SPEC §3): stage 1 (baseline), category prototypes, stage 2 (SADCL), each resumable.

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
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sadcl import distributed as D
from sadcl.checkpoint import load_checkpoint, save_checkpoint, selected_weights
from sadcl.config import Config, ConfigError, config_diff
from sadcl.data import build_dataset, build_loader
from sadcl.data.loader import EpochIndexSampler, SeededDataset
from sadcl.data.transforms import build_transforms
from sadcl.ema import ModelEma
from sadcl.engine import evaluate, train_one_epoch
from sadcl.io import atomic_write_text, finite, read_json
from sadcl.losses import build_criterion
from sadcl.models import build_model
from sadcl.optim import build_optimizer, build_scheduler

logger = logging.getLogger(__name__)

__all__ = ["STAGES", "StepHook", "run_training", "stage_config", "train_stage"]

STAGES = ("baseline", "sadcl")
"""Stage names, in run order; also the sub-directories of the run directory."""

StepHook = Callable[[str, int, int], None]
"""Called as ``hook(stage, epoch, steps_done_in_epoch)`` after every optimizer step (and after any mid-epoch save)."""

RESUME_MAY_CHANGE = (
    "train.device",
    "train.progress",
    "train.tensorboard",
    "train.log_interval",
    "train.output_dir",
    "data.workers",
    "data.eval_batch_size",
    "data.options.progress",
    "data.options.workers",
)
"""Settings a resumed run may change: where and how verbosely it runs, not what it computes."""

STAGE2_ONLY = (
    "loss.weight_sscl",
    "loss.weight_pscl",
    "loss.sscl_variant",
    "loss.sscl_anchor_scale",
    "loss.sscl_temperature",
    "loss.pscl_temperature",
    "model.proj_dim",
    "model.bank_slots",
    "model.bank_threshold",
    "model.prototypes",
    "train.prototype_threshold",
    "train.prototype_rule",
    "train.prototype_fallback",
)
"""Settings stage 1 never reads (a stage-1 run stays valid when only these change)."""


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
    settings only stage 2 reads, compared through :func:`stage_config` (so stage-1 values are the effective ones).
    """
    if "sadcl" in stages:
        return config_diff(saved, cfg, ignore=RESUME_MAY_CHANGE)
    return config_diff(
        stage_config(saved, "baseline"), stage_config(cfg, "baseline"), ignore=(*RESUME_MAY_CHANGE, *STAGE2_ONLY)
    )


SCALAR_METRICS = (
    "mAP",
    "CP",
    "CR",
    "CF1",
    "CF1_mean_per_class",
    "OP",
    "OR",
    "OF1",
    "CP_top3",
    "CR_top3",
    "CF1_top3",
    "OP_top3",
    "OR_top3",
    "OF1_top3",
)


def stage_config(cfg: Config, stage: str, *, prototypes: str | None = None) -> Config:
    """The configuration one stage actually runs with.

    Stage 1 is the baseline: ``model.contrastive=False`` and every ``train.baseline_*`` value that is set replaces
    its stage-2 counterpart (epochs, ASL gamma_neg/gamma_pos/clip, lr, EMA decay, early-stop patience, train
    preset). Stage 2 is SADCL with the given prototypes file and the configuration as written.
    """
    if stage == "baseline":
        t = cfg.train

        def pick(own: Any, shared: Any) -> Any:
            return shared if own is None else own

        model = dataclasses.replace(cfg.model, contrastive=False, prototypes=None)
        loss = dataclasses.replace(
            cfg.loss,
            gamma_neg=pick(t.baseline_gamma_neg, cfg.loss.gamma_neg),
            gamma_pos=pick(t.baseline_gamma_pos, cfg.loss.gamma_pos),
            clip=pick(t.baseline_clip, cfg.loss.clip),
        )
        optim = dataclasses.replace(cfg.optim, lr=pick(t.baseline_lr, cfg.optim.lr))
        train = dataclasses.replace(
            t,
            epochs=t.baseline_epochs or t.epochs,
            ema_decay=pick(t.baseline_ema_decay, t.ema_decay),
            early_stop_patience=pick(t.baseline_early_stop_patience, t.early_stop_patience),
        )
        data = dataclasses.replace(cfg.data, train_preset=pick(t.baseline_train_preset, cfg.data.train_preset))
        return dataclasses.replace(cfg, model=model, loss=loss, optim=optim, train=train, data=data)
    if stage == "sadcl":
        model = dataclasses.replace(cfg.model, contrastive=True, prototypes=prototypes or cfg.model.prototypes)
        return dataclasses.replace(cfg, model=model)
    raise ValueError(f"unknown stage {stage!r}; valid: {', '.join(STAGES)}")


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
        ``{stage: results}`` where results hold ``best_epoch``, ``selected``, ``val`` and ``test`` metrics.
    """
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise ValueError(f"unknown stage(s) {unknown}; valid: {', '.join(STAGES)}")
    info = D.init_distributed(device=cfg.train.device)
    out = Path(cfg.train.output_dir)
    if not resume:  # refuse before anything is written, so an existing run loses nothing
        taken = [str(out / s / "last.pt") for s in stages if (out / s / "last.pt").is_file()]
        if taken:
            raise FileExistsError(
                f"{', '.join(taken)} exists: pass --resume to continue that run, or choose another "
                "train.output_dir (nothing was overwritten)"
            )
    started = tuple(s for s in stages if (out / s / "last.pt").is_file())
    if resume and started and (out / "config.yaml").is_file():  # refuse before anything is written
        changed = changed_settings(saved_run_config(out / "config.yaml"), cfg, started)
        if changed:
            raise ConfigError(
                f"--resume: {out / 'config.yaml'} was trained with another configuration "
                f"({'; '.join(changed)}); resume with the same settings, or start a new "
                "train.output_dir (nothing was written)"
            )
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "config.yaml")
    results: dict[str, Any] = (read_json(out / "results.json") or {}) if info.is_main else {}
    if "baseline" in stages:
        results["baseline"] = train_stage(
            stage_config(cfg, "baseline"), out / "baseline", info=info, resume=resume, hook=hook
        )
    if "sadcl" in stages:
        init = Path(baseline_checkpoint) if baseline_checkpoint else out / "baseline" / "best.pt"
        if not init.is_file():
            raise FileNotFoundError(
                f"stage 2 starts from the stage-1 model, but {init} does not exist: run the "
                "baseline stage first or pass a baseline checkpoint"
            )
        protos = Path(cfg.model.prototypes) if cfg.model.prototypes else out / "prototypes.npy"
        if not cfg.model.prototypes and not (resume and protos.is_file()):
            if info.is_main:
                from sadcl.prototypes import build_prototypes

                build_prototypes(
                    init,
                    out=protos,
                    threshold=cfg.train.prototype_threshold,
                    rule=cfg.train.prototype_rule,
                    fallback=cfg.train.prototype_fallback,
                    split=cfg.data.train_split,
                    data=cfg.data,
                    device=info.device,
                    progress=cfg.train.progress,
                )
            D.barrier()
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


class _GlobalBatchCriterion(nn.Module):
    """SSCL/PSCL over the label-level features of every rank (``train.gather_features``); ASL stays per rank.

    The other ranks' features are constants here, so each rank back-propagates only through its own part of the
    global loss; DDP then averages the gradients over G ranks, i.e. divides the global loss's gradient by G, which the
    factor G on the contrastive terms undoes. The memory banks of all ranks are gathered too (row r*B + b pairs with
    the bank slot of its own rank).
    """

    def __init__(self, criterion: nn.Module, world_size: int) -> None:
        super().__init__()
        self.criterion = criterion
        self.world_size = world_size
        self.weight_dict = criterion.weight_dict

    def forward(self, outputs: dict[str, Tensor], targets: Tensor, ignore: Tensor | None = None) -> dict[str, Tensor]:
        targets, ignore = self.criterion.resolve_unknown(targets, ignore)
        terms = {"asl": self.criterion.asl(outputs["logits"], targets, ignore)}
        if self.criterion.contrastive:
            feats = outputs["proj_features"]
            bank = outputs["proj_bank"]
            if bank.shape[0] != feats.shape[0]:
                bank = bank[torch.arange(feats.shape[0], device=bank.device) % bank.shape[0]]
            gathered = {
                "proj_features": D.all_gather_with_grad(feats),
                "proj_bank": D.all_gather_with_grad(bank),
                "proj_prototypes": outputs["proj_prototypes"],
            }
            # The unknown-label mask travels with the targets (same rank order), as uint8: not every backend moves bool.
            global_ignore = None if ignore is None else D.all_gather_with_grad(ignore.to(torch.uint8)).bool()
            global_terms = self.criterion.contrastive_terms(gathered, D.all_gather_with_grad(targets), global_ignore)
            terms.update({k: v * self.world_size for k, v in global_terms.items()})
        return terms

    def total(self, terms: dict[str, Tensor]) -> Tensor:
        return self.criterion.total(terms)


def train_stage(
    cfg: Config,
    stage_dir: str | Path,
    *,
    info: D.DistInfo | None = None,
    resume: bool = False,
    init_weights: str | Path | None = None,
    hook: StepHook | None = None,
) -> dict[str, Any]:
    """Train, select on val and test one stage; see the module docstring for the files it writes.

    Args:
        cfg: The stage's configuration (see :func:`stage_config`).
        stage_dir: Where this stage's files go.
        info: From :func:`sadcl.distributed.init_distributed` (made here when None).
        resume: Continue from ``stage_dir/last.pt`` when it exists.
        init_weights: A stage-1 checkpoint to start from (stage 2): strict on every non-contrastive weight.
        hook: See :data:`StepHook`.

    Returns:
        ``{"best_epoch", "selected", "epochs_run", "val", "test", "test_regular", "test_ema", "test_per_class_AP"}``.
    """
    info = info or D.init_distributed(device=cfg.train.device)
    stage_dir = Path(stage_dir)
    stage = stage_dir.name
    tcfg = cfg.train
    last_path, best_path = stage_dir / "last.pt", stage_dir / "best.pt"
    if last_path.is_file() and not resume:
        raise FileExistsError(
            f"{last_path} exists: pass --resume to continue that run, or choose another "
            "train.output_dir (nothing was overwritten)"
        )
    ck = load_checkpoint(last_path) if resume and last_path.is_file() else None
    if ck is not None and ck.get("finished"):
        logger.info("%s: already finished (%s); reusing its results", stage, last_path)
        return read_json(stage_dir / "results.json") if info.is_main else {}
    if info.is_main:
        stage_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(stage_dir / "config.yaml")

    D.seed_everything(tcfg.seed, rank=info.rank)
    device = info.device
    # --- data
    train_tf, eval_tf = build_transforms(cfg.data, img_size=cfg.model.img_size, backbone=cfg.model.backbone)
    train_ds = build_dataset(cfg.data, cfg.data.train_split, train_tf)
    class_names = list(train_ds.class_names)
    if len(train_ds) and not bool((train_ds.targets > 0).any()):
        raise ConfigError(
            f"the {cfg.data.train_split!r} split of the {cfg.data.format} dataset has no positive "
            "label at all: check its label file (a model cannot learn from all-negative labels)"
        )
    if len(class_names) != cfg.model.num_classes:
        raise ConfigError(
            f"model.num_classes={cfg.model.num_classes}, but the {cfg.data.format} dataset has "
            f"{len(class_names)} classes: set model.num_classes={len(class_names)}"
        )
    val_split, test_split = cfg.data.val_split, cfg.data.test_split
    if val_split is not None and val_split == test_split:
        logger.warning(
            "data.val_split == data.test_split (%r): the model is selected on the split it is tested on", val_split
        )
    eval_bs = cfg.data.eval_batch_size or cfg.data.batch_size
    # Every split is opened (and its manifest validated) before any training, so a bad test file fails now.
    val_loader = _eval_loader(cfg, val_split, eval_tf, eval_bs, class_names) if val_split else None
    test_loader = _eval_loader(cfg, test_split, eval_tf, eval_bs, class_names) if test_split else None
    train_sampler = EpochIndexSampler(D.build_train_sampler(train_ds, seed=tcfg.seed))
    per_rank = len(train_sampler)
    if per_rank == 0:
        raise ValueError(f"the {cfg.data.train_split!r} split is empty")
    train_loader = build_loader(
        SeededDataset(train_ds, tcfg.seed),
        batch_size=cfg.data.batch_size,
        sampler=train_sampler,
        workers=cfg.data.workers,
        drop_last=per_rank >= cfg.data.batch_size,
        seed=tcfg.seed,
    )
    steps = len(train_loader) if tcfg.max_steps_per_epoch is None else min(len(train_loader), tcfg.max_steps_per_epoch)
    # --- model
    mcfg = cfg.model
    if init_weights is not None:
        mcfg = dataclasses.replace(mcfg, pretrained=False)  # every backbone weight comes from stage 1
    model = build_model(mcfg)
    if init_weights is not None:
        model.load_baseline_state_dict(selected_weights(load_checkpoint(init_weights)))
        if mcfg.contrastive and mcfg.prototypes:
            model.load_prototypes(mcfg.prototypes)  # after the weights: refills the bank from the prototypes
    model.to(device)
    if tcfg.sync_bn and info.distributed:
        if device.type != "cuda":
            raise ConfigError("train.sync_bn needs CUDA (SyncBatchNorm has no CPU implementation); set it false")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    train_model: nn.Module = model
    if info.distributed:
        # The memory bank is a per-rank buffer (as official): never broadcast rank 0's over the others.
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
        )
    # After DDP's start-up broadcast of rank 0's weights: every rank's EMA must start from the same model, or the
    # sharded validation of the EMA would score a different model on each shard.
    ema = ModelEma(model, decay=tcfg.ema_decay, warmup=tcfg.ema_warmup)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, epochs=tcfg.epochs, steps_per_epoch=steps)
    criterion: nn.Module = build_criterion(cfg.loss, contrastive=mcfg.contrastive)
    if tcfg.gather_features and info.distributed and mcfg.contrastive:
        criterion = _GlobalBatchCriterion(criterion, info.world_size)
    use_amp = tcfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if use_amp else None

    # --- state
    start_epoch, start_step = 0, 0
    best: dict[str, Any] = {"score": -math.inf, "epoch": -1, "selected": None}
    history: list[dict[str, Any]] = []
    if ck is not None:
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        ema.load_state_dict(ck["ema"])
        ema.updates = int(ck.get("ema_updates", 0))
        if scaler is not None and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        _set_rng_state(ck["rng"], info.rank)
        best, history = dict(ck["best"]), list(ck["history"])
        start_epoch, start_step = int(ck["epoch"]), int(ck["step"])
        if ck["epoch_done"]:
            start_epoch, start_step = start_epoch + 1, 0
        logger.info("%s: resumed from %s at epoch %d step %d", stage, last_path, start_epoch, start_step)

    writer = _tensorboard(stage_dir / "tb") if info.is_main and tcfg.tensorboard else None

    def state(epoch: int, step: int, epoch_done: bool, finished: bool = False) -> dict[str, Any]:
        rng = _gather_rng_state()
        return {
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "ema_updates": ema.updates,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler else None,
            "rng": rng,
            "config": cfg.to_dict(),
            "class_names": class_names,
            "stage": stage,
            "epoch": epoch,
            "step": step,
            "epoch_done": epoch_done,
            "finished": finished,
            "best": best,
            "history": history,
        }

    def save_last(epoch: int, step: int, epoch_done: bool, finished: bool = False) -> None:
        snapshot = state(epoch, step, epoch_done, finished)  # collective (RNG gather): every rank calls it
        if info.is_main:
            save_checkpoint(snapshot, last_path)

    epochs_run = 0
    stop_reason = "completed"
    for epoch in range(start_epoch, tcfg.epochs):
        if _early_stop(tcfg.early_stop_patience, best["epoch"], epoch - 1):
            stop_reason = f"early stop: no val improvement since epoch {best['epoch']}"
            break
        train_sampler.set_epoch(epoch)

        def log_fn(step: int, values: dict[str, float], epoch: int = epoch) -> None:
            done = step + 1
            if writer is not None and done % tcfg.log_interval == 0:
                gstep = epoch * steps + done
                for k, v in values.items():
                    writer.add_scalar(f"{stage}/train/{k}", v, gstep)
                writer.add_scalar(f"{stage}/train/lr", optimizer.param_groups[0]["lr"], gstep)
            if tcfg.checkpoint_interval and done % tcfg.checkpoint_interval == 0 and done < steps:
                save_last(epoch, done, epoch_done=False)
            if hook is not None:
                hook(stage, epoch, done)

        t_epoch = time.perf_counter()
        train_stats = train_one_epoch(
            train_model,
            criterion,
            train_loader,
            optimizer,
            scheduler,
            device=device,
            epoch=epoch,
            ema=ema,
            scaler=scaler,
            amp=use_amp,
            clip_grad_norm=cfg.optim.clip_grad_norm,
            max_steps=steps,
            progress=tcfg.progress and info.is_main,
            log_fn=log_fn,
            start_step=start_step if epoch == start_epoch else 0,
            grad_probe_interval=tcfg.grad_probe_interval,
        )
        train_seconds = time.perf_counter() - t_epoch
        done_steps = steps - (start_step if epoch == start_epoch else 0)
        train_stats = {k: v for k, v in D.reduce_means(train_stats).items() if math.isfinite(v)}
        row: dict[str, Any] = {
            "epoch": epoch,
            "train": train_stats,
            "lr": optimizer.param_groups[0]["lr"],
            "train_seconds": train_seconds,
            "train_images": done_steps * cfg.data.batch_size * info.world_size,
        }
        if mcfg.contrastive and hasattr(model, "prototypes"):
            row["prototypes"] = _prototype_summary(model.prototypes.detach(), class_names)
        improved = val_loader is None
        if val_loader is not None:
            reg = _scalars(evaluate(model, val_loader, device=device, amp=use_amp))
            emv = _scalars(evaluate(ema.module, val_loader, device=device, amp=use_amp))
            selected = "ema" if emv["mAP"] > reg["mAP"] else "regular"  # the better of the two, as official
            score = max(reg["mAP"], emv["mAP"])
            row["val"] = {"regular": reg, "ema": emv, "selected": selected}
            improved = score > best["score"]
            if improved:
                best = {"score": score, "epoch": epoch, "selected": selected}
        else:
            # No validation split: keep the last epoch. A constant-decay EMA started from random weights is mostly
            # that random start after a short run (0.9998^1000 = 0.82), so it is used only when warmed up.
            best = {"score": math.nan, "epoch": epoch, "selected": "ema" if tcfg.ema_warmup else "regular"}
        history.append(row)
        if info.is_main:
            if improved:
                save_checkpoint(
                    {
                        "model": model.state_dict(),
                        "ema": ema.state_dict(),
                        "selected": best["selected"],
                        "config": cfg.to_dict(),
                        "class_names": class_names,
                        "stage": stage,
                        "epoch": epoch,
                        "metrics": row,
                    },
                    best_path,
                )
            atomic_write_text(stage_dir / "metrics.json", json.dumps(history, indent=2))
            if writer is not None:
                for k, v in train_stats.items():
                    writer.add_scalar(f"{stage}/train_epoch/{k}", v, epoch)
                for k in ("zero", "near_zero") if "prototypes" in row else ():
                    writer.add_scalar(f"{stage}/prototypes/{k}_rows", len(row["prototypes"][k]), epoch)
                for which in ("regular", "ema"):
                    for k, v in row.get("val", {}).get(which, {}).items():
                        writer.add_scalar(f"{stage}/val_{which}/{k}", v, epoch)
                writer.flush()
            val_txt = (
                f"val mAP {row['val']['regular']['mAP']:.2f} (EMA {row['val']['ema']['mAP']:.2f})"
                if "val" in row
                else "no val split"
            )
            logger.info(
                "%s epoch %d/%d: loss %.4f, %s%s",
                stage,
                epoch + 1,
                tcfg.epochs,
                train_stats.get("loss", 0.0),
                val_txt,
                " *" if improved and "val" in row else "",
            )
        save_last(epoch, steps, epoch_done=True)
        epochs_run += 1
    if writer is not None:
        writer.close()
    # The finished state (last weights) is written aside now and put in place only after the results exist.
    finished_tmp = last_path.with_name(last_path.name + ".finished")
    final = state(history[-1]["epoch"] if history else -1, steps, epoch_done=True, finished=True)
    if info.is_main:
        save_checkpoint(final, finished_tmp)
    del final

    # --- test the selected model (regular and EMA weights of the best epoch, both reported)
    seconds = sum(r.get("train_seconds", 0.0) for r in history)
    images = sum(r.get("train_images", 0) for r in history)
    results: dict[str, Any] = {
        "best_epoch": best["epoch"],
        "selected": best["selected"],
        "epochs_run": len(history),
        "stop_reason": stop_reason,
        "train_seconds": seconds,
        "selection": (
            "better of regular / EMA on val at the best val epoch"
            if val_split
            else f"no validation split: last epoch, {best['selected']} weights "
            + (
                "(EMA with warm-up)"
                if best["selected"] == "ema"
                else "(the EMA is used only with train.ema_warmup=true)"
            )
        ),
        "train_images_per_s": images / seconds if seconds > 0 else None,
        "val": next((r.get("val") for r in history if r["epoch"] == best["epoch"]), None),
    }
    D.barrier()
    best_state = load_checkpoint(best_path)
    if test_loader is not None:
        for which in ("regular", "ema"):
            model.load_state_dict(selected_weights(best_state, use_ema=which == "ema"))
            summary = evaluate(model, test_loader, device=device, amp=use_amp)
            results[f"test_{which}"] = _scalars(summary)
            if which == best["selected"]:
                results["test"] = _scalars(summary)
                results["test_per_class_AP"] = {n: finite(a) for n, a in zip(class_names, summary["per_class_AP"])}
    if info.is_main:
        atomic_write_text(stage_dir / "results.json", json.dumps(results, indent=2))
        # Finished only once the results are on disk: an interrupted test evaluation is redone by --resume.
        os.replace(finished_tmp, last_path)
        if "test" in results:
            logger.info(
                "%s: selected %s weights of epoch %d; test mAP %.2f CF1 %.2f OF1 %.2f",
                stage,
                best["selected"],
                best["epoch"] + 1,
                results["test"]["mAP"],
                results["test"]["CF1"],
                results["test"]["OF1"],
            )
    return results


def _prototype_summary(prototypes: Tensor, class_names: list[str]) -> dict[str, Any]:
    """Prototype health for metrics.json: the zero and near-zero rows by class name, and the median row norm."""
    from sadcl.prototypes import prototype_health

    h = prototype_health(prototypes, class_names)
    return {"zero": h["zero"], "near_zero": h["near_zero"], "median_norm": h["median_norm"]}


def _eval_loader(
    cfg: Config, split: str, transform: Any, batch_size: int, class_names: list[str]
) -> torch.utils.data.DataLoader:
    ds = build_dataset(cfg.data, split, transform, class_names=class_names)
    if len(ds) == 0:
        raise ConfigError(
            f"the {split!r} split of the {cfg.data.format} dataset is empty: an evaluation split needs "
            "images (or set data.val_split=null to train without validation)"
        )
    return build_loader(ds, batch_size=batch_size, sampler=D.build_eval_sampler(ds), workers=cfg.data.workers)


def _early_stop(patience: int | None, best_epoch: int, last_epoch: int) -> bool:
    """Official rule: stop once the last finished epoch is more than ``patience`` epochs past the best."""
    return patience is not None and best_epoch >= 0 and last_epoch - best_epoch > patience


def _scalars(summary: dict[str, Any]) -> dict[str, float]:
    return {k: finite(summary[k]) for k in SCALAR_METRICS if k in summary}


def _rng_state() -> dict[str, Any]:
    """This process's generator states as tensors and plain data (``weights_only`` safe)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }


def _gather_rng_state() -> list[dict[str, Any]]:
    """The generator states of every rank, in rank order (each rank resumes its own stream)."""
    own = _rng_state()
    if D.get_world_size() == 1:
        return [own]
    import torch.distributed as dist

    states: list[Any] = [None] * D.get_world_size()
    dist.all_gather_object(states, own)
    return states


def _set_rng_state(states: list[dict[str, Any]], rank: int) -> None:
    if rank >= len(states):
        logger.warning("the checkpoint holds RNG states of %d ranks; rank %d starts a fresh stream", len(states), rank)
        return
    s = states[rank]
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = s["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def _tensorboard(path: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but keep training if an environment lacks it
        logger.warning("tensorboard is not installed; no TensorBoard logs")
        return None
    return SummaryWriter(str(path))
