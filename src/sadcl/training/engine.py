"""The training and evaluation loops (docs/spec.md §3.3), with explicit parameters only."""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from sadcl.data.run_loaders import build_eval_loader
from sadcl.distributed import gather_eval_outputs, sampler_indices
from sadcl.inference.postprocess import probabilities
from sadcl.progress import progress_bar
from sadcl.training.ema import unwrap_model

logger = logging.getLogger(__name__)


def memory_format(model: nn.Module) -> torch.memory_format:
    """``channels_last`` when the model's first 4-D weight is in that layout (``train.channels_last``), else NCHW.

    Batches are moved to the model's layout so that no convolution converts its input on every call.
    """
    for p in model.parameters():
        if p.dim() != 4:
            continue
        nhwc = p.is_contiguous(memory_format=torch.channels_last)
        if nhwc != p.is_contiguous():  # a 1x1 convolution's weight is both: it cannot tell
            return torch.channels_last if nhwc else torch.contiguous_format
    return torch.contiguous_format


def place_model(model: nn.Module, *, device: torch.device | str, channels_last: bool) -> nn.Module:
    """Move ``model`` to ``device`` and, with ``channels_last`` (``train.channels_last``), its 4-D weights to that
    layout (in place; returned for chaining). Training, evaluation and prototypes all run the model placed this way."""
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)  # only 4-D weights change; the loops follow via memory_format
    return model


def trunk_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters every loss term reaches: backbone, transformer and label queries (not the heads)."""
    core = unwrap_model(model)
    parts = [getattr(core, name) for name in ("backbone", "transformer", "query_embed") if hasattr(core, name)]
    return [p for part in parts for p in part.parameters() if p.requires_grad]


def gradient_shares(
    terms: dict[str, torch.Tensor], weights: dict[str, float], params: list[nn.Parameter]
) -> dict[str, float]:
    """How much of the shared trunk's gradient each weighted loss term contributes (a diagnostic; keeps the graph).

    Returns:
        ``grad_norm_<term>`` (norm of ``weight * d term / d trunk``), ``grad_share_<term>`` (that norm over the sum
        of the norms) and, when there is a contrastive term, ``grad_cos_asl_contrastive``: the cosine between the
        ASL gradient and the sum of the other terms' gradients.
    """
    grads: dict[str, torch.Tensor] = {}
    for name, value in terms.items():
        w = weights.get(name, 1.0)
        if w == 0 or not value.requires_grad:
            continue
        gs = torch.autograd.grad(value * w, params, retain_graph=True, allow_unused=True)
        grads[name] = torch.cat(
            [(g if g is not None else torch.zeros_like(p)).reshape(-1).float() for g, p in zip(gs, params)]
        )
    norms = {k: float(g.norm()) for k, g in grads.items()}
    total = sum(norms.values()) or 1.0
    out = {f"grad_norm_{k}": v for k, v in norms.items()}
    out.update({f"grad_share_{k}": v / total for k, v in norms.items()})
    others = [g for k, g in grads.items() if k != "asl"]
    if "asl" in grads and others:
        rest = torch.stack(others).sum(0)
        out["grad_cos_asl_contrastive"] = float(torch.nn.functional.cosine_similarity(grads["asl"], rest, dim=0))
    return out


def train_step(
    model: nn.Module,
    criterion: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    ignore: torch.Tensor | None,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    *,
    ema: Any = None,
    scaler: Any = None,
    use_amp: bool = False,
    clip_grad_norm: float | None = None,
    probe_params: list[nn.Parameter] | None = None,
    where: str = "",
    progress: float | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, float]]:
    """One optimizer step in the official order (docs/spec.md §3.3): forward -> loss terms -> total -> (gradient
    probe) -> memory-bank update with this forward's features and logits (before backward) -> backward -> clip ->
    optimizer step -> (prototypes that follow the model: their update from the bank's written mask) ->
    ``scheduler.step()`` -> ``ema.update``.

    Args:
        model: The (possibly DDP-wrapped) model, in train mode; ``images`` already on its device and layout.
        criterion: Returns named unweighted terms; ``criterion.total`` applies the weights.
        images: ``[B, 3, H, W]``.
        targets: ``[B, C]``.
        ignore: Bool ``[B, C]`` unknown labels, or None.
        optimizer, scheduler: Stepped once (the scheduler per iteration; None = no scheduler).
        ema: Updated after the optimizer step (None = none).
        scaler: A ``GradScaler`` used with ``use_amp`` (CUDA mixed precision).
        use_amp: Autocast the forward and the loss.
        clip_grad_norm: Clip the gradient norm to this (None = no clipping, as official).
        probe_params: Measure each weighted term's share of these parameters' gradient (:func:`gradient_shares`)
            before the backward pass; None = no probe.
        where: Names the step in the non-finite-loss error (e.g. ``epoch 3 step 12``).
        progress: Share of the stage's steps done before this one (``criterion.weights``: the contrastive
            warm-up); None = the criterion's full weights.

    Returns:
        ``(outputs, terms, probes)``: the model's outputs (detach before keeping them), the unweighted terms plus
        ``"loss"``, the weighted total (detached), and the probe values (empty without a probe).

    Raises:
        FloatingPointError: the total loss is not finite (nothing was stepped).
    """
    device_type = images.device.type
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type=device_type, enabled=use_amp):
        outputs = model(images)
        terms = criterion(outputs, targets, ignore)
        loss = criterion.total(terms, progress=progress)
    if not math.isfinite(loss.item()):
        raise FloatingPointError(
            f"non-finite loss {loss.item()} at {where or 'this step'} ("
            + ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
            + "); try a lower optim.lr"
            + (" or train.amp=false" if use_amp else "")
            + ", or optim.clip_grad_norm=10"
        )
    probes = (
        gradient_shares(terms, criterion.weights(progress), probe_params) if probe_params and len(terms) > 1 else {}
    )
    core = unwrap_model(model)
    taken = None
    if hasattr(core, "update_memory_bank") and getattr(core, "contrastive", False):
        taken = core.update_memory_bank(outputs["features"].detach(), targets, outputs["logits"].detach(), ignore)
    if scaler is not None and use_amp:
        scaler.scale(loss).backward()
        if clip_grad_norm:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if clip_grad_norm:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        optimizer.step()
    if taken is not None and hasattr(core, "update_prototypes"):  # model.prototype_momentum; a no-op when learned
        core.update_prototypes(outputs["features"].detach(), taken)
    if scheduler is not None:
        scheduler.step()
    if ema is not None:
        ema.update(model)
    terms["loss"] = loss.detach()
    return outputs, terms, probes


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    *,
    device: torch.device | str,
    epoch: int,
    ema: Any = None,
    scaler: Any = None,
    amp: bool = False,
    clip_grad_norm: float | None = None,
    max_steps: int | None = None,
    progress: bool = False,
    log_fn: Callable[[int, dict[str, float]], None] | None = None,
    start_step: int = 0,
    grad_probe_interval: int | None = None,
    stage_steps: int | None = None,
) -> dict[str, float]:
    """Train one epoch: :func:`train_step` on every batch, with the bookkeeping around it (progress, per-step
    values, running means, the training batches' mAP).

    The loader yields ``(images, targets)`` or ``(images, targets, ignore)``; the unknown-label mask goes to the
    criterion (``criterion(outputs, targets, ignore)``), the memory-bank update and ``train_mAP``.

    Args:
        start_step: steps of this epoch already done (mid-epoch resume): the loader's first ``start_step`` batches
            are skipped, so its order must be reproducible from (seed, epoch).
        max_steps: stop after this many steps of the epoch (counted from 0, including skipped ones).
        log_fn: called as ``log_fn(step, values)`` after each step.
        grad_probe_interval: every this many steps (and at the epoch's first), measure each term's share of the
            trunk gradient (:func:`gradient_shares`: one extra backward pass per term on those steps; it changes no
            weight). None = never; skipped under DDP, whose gradient hooks must see exactly one backward per step.
        stage_steps: the stage's optimizer steps over all its epochs: each step's share of them done
            (``epoch * steps + step) / stage_steps``) goes to :func:`train_step` (the loss's contrastive warm-up);
            None = no warm-up.

    Returns:
        Mean over the steps run here of each weighted loss term, ``loss``, each unweighted term
        (``<term>_unweighted``) and, when probed, the gradient shares; plus ``train_mAP``: the mAP of the training
        batches' scores as they were trained on (augmented images, the model of each step; a cheap fit indicator).

    Raises:
        FloatingPointError: the total loss is not finite.
    """
    device = torch.device(device)
    use_amp = amp and device.type == "cuda"  # AMP only on CUDA: CPU runs stay fp32
    model.train()
    sums: dict[str, float] = {}
    probes: dict[str, float] = {}
    n = n_probes = 0
    seen_scores, seen_targets, seen_ignore = [], [], []
    probe_params = (
        trunk_parameters(model)
        if grad_probe_interval and not isinstance(model, nn.parallel.DistributedDataParallel)
        else []
    )
    fmt = memory_format(model)
    it: Iterable = iter(loader)
    if start_step:
        it = itertools.islice(it, start_step, None)
    total_steps = len(loader) if max_steps is None else min(len(loader), max_steps)  # type: ignore[arg-type]
    if progress:  # a bar on a terminal, a few lines in a log file (sadcl.progress); epochs 1-based as the log
        it = progress_bar(it, total=max(total_steps - start_step, 0), desc=f"epoch {epoch + 1}", unit="step")
    for step, batch in enumerate(it, start=start_step):
        if step >= total_steps:
            break
        images = batch[0].to(device, non_blocking=True, memory_format=fmt)
        targets = batch[1].to(device, non_blocking=True)
        ignore = batch[2].to(device, non_blocking=True).bool() if len(batch) > 2 else None  # unknown labels
        probe = probe_params and (step - start_step) % grad_probe_interval == 0
        done = (epoch * total_steps + step) / stage_steps if stage_steps else None  # share of the stage's steps
        outputs, terms, probed = train_step(
            model,
            criterion,
            images,
            targets,
            ignore,
            optimizer,
            scheduler,
            ema=ema,
            scaler=scaler,
            use_amp=use_amp,
            clip_grad_norm=clip_grad_norm,
            probe_params=probe_params if probe else None,
            where=f"epoch {epoch + 1} step {step + 1}",  # counted from 1, as the epoch log line
            progress=done,
        )
        if probed:
            for k, v in probed.items():
                probes[k] = probes.get(k, 0.0) + v
            n_probes += 1
        seen_scores.append(probabilities(outputs["logits"].detach()).cpu())
        seen_targets.append(targets.detach().float().cpu())
        seen_ignore.append(ignore.cpu() if ignore is not None else torch.zeros_like(seen_targets[-1], dtype=torch.bool))
        loss = terms.pop("loss")
        raw = {k: float(v.detach()) for k, v in terms.items()}  # one device sync per term
        weights = criterion.weights(done)
        values = {k: v * weights.get(k, 1.0) for k, v in raw.items()}
        values.update({f"{k}_unweighted": v for k, v in raw.items()})
        values["loss"] = float(loss)
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
        n += 1
        if log_fn is not None:
            log_fn(step, values)
    stats = {k: v / max(n, 1) for k, v in sums.items()}
    stats.update({k: v / n_probes for k, v in probes.items()})
    if seen_scores:
        from sadcl.metrics import mean_average_precision

        # Always present (NaN when no class had a positive): under DDP every rank must report the same keys.
        seen_ig = torch.cat(seen_ignore)
        stats["train_mAP"] = mean_average_precision(
            torch.cat(seen_scores).numpy(),
            torch.cat(seen_targets).numpy(),
            ignore=seen_ig.numpy() if seen_ig.any() else None,  # known labels only
        )
    return stats


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Any,
    *,
    device: torch.device | str,
    criterion: nn.Module | None = None,
    amp: bool = False,
    progress: bool = False,
    threshold: Any = 0.5,
) -> dict[str, Any]:
    """Score a loader and summarise (scores, targets, ignore gathered across ranks; the bank is never updated).

    The loader yields ``(images, targets)`` or ``(images, targets, ignore)`` and uses a non-shuffling sampler.

    Returns:
        ``sadcl.metrics.summarize`` output (unknown labels skipped) plus ``scores`` [N, C], ``logits`` [N, C]
        (float32; calibration needs them unsaturated), ``targets`` [N, C], ``ignore`` [N, C] bool and ``loss`` if a
        criterion.
    """
    from sadcl.metrics import summarize

    device = torch.device(device)
    use_amp = amp and device.type == "cuda"
    model.eval()
    fmt = memory_format(model)
    scores, logits, targets, ignores, losses = [], [], [], [], []
    it = loader
    if progress:
        it = progress_bar(loader, desc="eval", unit="batch")
    for batch in it:
        images, target = batch[0].to(device, memory_format=fmt), batch[1].to(device)
        ignore = batch[2].to(device).bool() if len(batch) > 2 else torch.zeros_like(target, dtype=torch.bool)
        with torch.autocast(device_type=device.type, enabled=use_amp):
            out = model(images)
        if criterion is not None:
            losses.append(float(criterion.total(criterion(out, target, ignore))))
        scores.append(probabilities(out["logits"]).cpu())
        logits.append(out["logits"].float().cpu())
        targets.append(target.float().cpu())
        ignores.append(ignore.cpu())
    s, lg, t, ig = torch.cat(scores), torch.cat(logits), torch.cat(targets), torch.cat(ignores)
    sampler = getattr(loader, "sampler", None)
    indices = sampler_indices(sampler) if sampler is not None else torch.arange(len(s))
    s, lg, t, ig = gather_eval_outputs(s, lg, t, ig, indices=indices[: len(s)])
    result = summarize(s.numpy(), t.numpy(), ig.numpy() if ig.any() else None, threshold)
    result.update(scores=s, logits=lg, targets=t, ignore=ig)
    if losses:
        result["loss"] = sum(losses) / len(losses)
    return result


def score_split(
    model: nn.Module,
    config: Any,
    split: str,
    *,
    device: torch.device | str,
    class_names: list[str] | None = None,
    amp: bool = False,
    batch_size: int | None = None,
    workers: int | None = None,
    threshold: Any = 0.5,
    progress: bool = False,
) -> tuple[dict[str, Any], Any]:
    """Score one split of a run's dataset with a trained model: what ``sadcl evaluate``, ``tune-thresholds`` and
    ``report`` run (the split's :func:`sadcl.data.run_loaders.build_eval_loader`, then :func:`evaluate`).

    Args:
        model: The model (moved to ``device``).
        config: The run's config (the split's data, the evaluation transform).
        split: The split to score.
        device: Where to run.
        class_names: The model's class list (see ``build_eval_loader``).
        amp: Autocast on CUDA.
        batch_size: Default: ``data.eval_batch_size`` (or ``data.batch_size``).
        workers: Loader processes (default: ``data.workers``).
        threshold: Scalar or [C] threshold of the threshold metrics.
        progress: Show a progress bar.

    Returns:
        ``(evaluate's result, the dataset)``; every row in dataset order, on every rank.
    """
    loader = build_eval_loader(config, split, class_names=class_names, batch_size=batch_size, workers=workers)
    result = evaluate(model.to(device), loader, device=device, amp=amp, threshold=threshold, progress=progress)
    return result, loader.dataset
