"""The build step of a training stage: data loaders, model (from stage 1), DDP, EMA, optimizer, criterion.

:class:`Stage` holds what the later steps of ``sadcl.training.stage`` (resume, fit, select_checkpoint, evaluate_test)
read; only :func:`build_stage` reads the configuration to make it.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from sadcl import distributed as D
from sadcl.checkpoint import load_checkpoint, selected_weights
from sadcl.config import Config, ConfigError
from sadcl.data import build_dataset, build_loader
from sadcl.data.loader import EpochIndexSampler, SeededDataset
from sadcl.data.run_loaders import build_eval_loader
from sadcl.data.transforms import build_transforms
from sadcl.losses import Criterion, build_criterion
from sadcl.models import build_model
from sadcl.training.ema import ModelEma
from sadcl.training.engine import place_model
from sadcl.training.optim import build_optimizer, build_scheduler

logger = logging.getLogger(__name__)

__all__ = ["Stage", "build_stage"]


@dataclass
class Stage:
    """Everything one stage trains with, as :func:`build_stage` made it (read by the later steps)."""

    cfg: Config
    stage_dir: Path
    info: D.DistInfo
    class_names: list[str]
    train_loader: DataLoader
    train_sampler: EpochIndexSampler
    val_loader: DataLoader | None
    test_loader: DataLoader | None
    steps: int
    """Optimizer steps per epoch (``train.max_steps_per_epoch`` applied)."""
    model: nn.Module
    """The bare model (what is saved, evaluated and EMA-tracked)."""
    train_model: nn.Module
    """``model`` or its DDP wrapper (what the loop calls)."""
    ema: ModelEma
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    criterion: Criterion
    scaler: torch.amp.GradScaler | None
    use_amp: bool

    @property
    def name(self) -> str:
        """``baseline`` or ``sadcl`` (the directory name)."""
        return self.stage_dir.name

    @property
    def last_path(self) -> Path:
        return self.stage_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.stage_dir / "best.pt"


def build_stage(cfg: Config, stage_dir: Path, *, info: D.DistInfo, init_weights: str | Path | None = None) -> Stage:
    """Open every split, build the model (from ``init_weights`` when given), DDP, EMA, optimizer and criterion."""
    tcfg = cfg.train
    device = info.device
    train_tf, _ = build_transforms(cfg.data, img_size=cfg.model.img_size, backbone=cfg.model.backbone)
    train_ds = build_dataset(cfg.data, cfg.data.train_split, train_tf, cache_images=cfg.data.cache_images)
    class_names = list(train_ds.class_names)
    if len(train_ds) and not bool((train_ds.targets > 0).any()):
        raise ConfigError(
            f"the {cfg.data.train_split!r} split of the {cfg.data.format} dataset has no positive "
            "label at all: check its label file (a model cannot learn from all-negative labels)"
        )
    if cfg.model.num_classes is None:  # model.num_classes: null (the default) = the training split's class count
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=len(class_names)))
        logger.info("model.num_classes=%d: the classes of the %r split", len(class_names), cfg.data.train_split)
    elif len(class_names) != cfg.model.num_classes:
        raise ConfigError(
            f"model.num_classes={cfg.model.num_classes}, but the {cfg.data.format} dataset has "
            f"{len(class_names)} classes: set model.num_classes={len(class_names)}, or null to take the data's"
        )
    val_split, test_split = cfg.data.val_split, cfg.data.test_split
    if val_split is not None and val_split == test_split:
        logger.warning(
            "data.val_split == data.test_split (%r): the model is selected on the split it is tested on", val_split
        )
    # Every split is opened (and its manifest validated) before any training, so a bad test file fails now.
    val_loader, test_loader = (
        build_eval_loader(cfg, split, class_names=class_names, cache_images=cfg.data.cache_images) if split else None
        for split in (val_split, test_split)
    )
    train_sampler = EpochIndexSampler(D.build_train_sampler(train_ds, seed=tcfg.seed))
    per_rank = len(train_sampler)
    if per_rank == 0:
        raise ValueError(f"the {cfg.data.train_split!r} split is empty")
    if per_rank < cfg.data.batch_size:
        _warn_batch_larger_than_split(cfg, per_rank, info.world_size)
    train_loader = build_loader(
        SeededDataset(train_ds, tcfg.seed),
        batch_size=cfg.data.batch_size,
        sampler=train_sampler,
        workers=cfg.data.workers,
        drop_last=per_rank >= cfg.data.batch_size,
        seed=tcfg.seed,
    )
    steps = len(train_loader) if tcfg.max_steps_per_epoch is None else min(len(train_loader), tcfg.max_steps_per_epoch)

    mcfg = cfg.model
    if init_weights is not None:
        mcfg = dataclasses.replace(mcfg, pretrained=False)  # every backbone weight comes from stage 1
    model = build_model(mcfg)
    if init_weights is not None:
        model.load_baseline_state_dict(selected_weights(load_checkpoint(init_weights)))
        if mcfg.contrastive and mcfg.prototypes:
            model.load_prototypes(mcfg.prototypes)  # after the weights: refills the bank from the prototypes
    place_model(model, device=device, channels_last=tcfg.channels_last)
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
    if mcfg.contrastive and init_weights is None:
        # One stage with SADCL's terms: every rank drew its own random prototypes and DDP has just broadcast rank 0's;
        # the bank (a per-rank buffer) starts from those, as after a prototypes file.
        model.memory_bank.fill(model.prototypes.detach())
    # After DDP's start-up broadcast of rank 0's weights: every rank's EMA must start from the same model, or the
    # sharded validation of the EMA would score a different model on each shard.
    ema = ModelEma(model, decay=tcfg.ema_decay, warmup=tcfg.ema_warmup)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, epochs=tcfg.epochs, steps_per_epoch=steps)
    criterion = build_criterion(
        cfg.loss, contrastive=mcfg.contrastive, gather_features=tcfg.gather_features and info.distributed
    )
    use_amp = tcfg.amp and device.type == "cuda"
    return Stage(
        cfg=cfg,
        stage_dir=stage_dir,
        info=info,
        class_names=class_names,
        train_loader=train_loader,
        train_sampler=train_sampler,
        val_loader=val_loader,
        test_loader=test_loader,
        steps=steps,
        model=model,
        train_model=train_model,
        ema=ema,
        optimizer=optimizer,
        scheduler=scheduler,
        criterion=criterion,
        scaler=torch.amp.GradScaler("cuda") if use_amp else None,
        use_amp=use_amp,
    )


_WARNED_BATCH: set[tuple[Any, ...]] = set()


def _warn_batch_larger_than_split(cfg: Config, per_rank: int, world_size: int) -> None:
    """Warn (once per process for a dataset, batch and split size: not again for stage 2) that every step trains on
    the whole split, as one batch smaller than ``data.batch_size``."""
    key = (cfg.data.format, cfg.data.root, cfg.data.train_split, cfg.data.batch_size, per_rank)
    if key in _WARNED_BATCH:
        return
    _WARNED_BATCH.add(key)
    share = f"{per_rank} per process" if world_size > 1 else str(per_rank)
    logger.warning(
        "data.batch_size=%d is larger than the %r split (%s images): each epoch is one batch of %d images; "
        "lower data.batch_size to train with several steps per epoch",
        cfg.data.batch_size,
        cfg.data.train_split,
        share,
        per_rank,
    )
