"""Category prototypes from a stage-1 (baseline) model (docs/spec.md §1.11).

Rules, for class c with ground-truth positives P_c (N_c = |P_c|) and selected set S_c = {i in P_c : σ(logit_ic) > τ}:

- ``official`` (inferred from the official code): p_c = (1 / N_c) Σ_{i ∈ P_c} 1[σ(logit_ic) > τ] · f_ic.
  The divisor counts every ground-truth positive, so a class with few confident positives gets a shorter prototype.
- ``mean_selected``: p_c = mean of f_ic over S_c.
- ``kmeans``: k-means (k clusters, deterministic init from the first k selected features) over S_c; the centroid of
  the largest cluster is kept as p_c.

A class with no selected feature would get a zero prototype, on which PSCL trains nothing useful (its cosine is 0 for
every sample). ``fallback='mean_positives'`` (default) gives it the mean feature of all its positives instead;
``'error'`` refuses. A class without any positive in the split keeps a zero row, with a warning naming it (there is
nothing to average; PSCL passes no gradient through a zero prototype). The health of the result (norm of
every row, how many are zero or near zero, which classes fell back) is returned and written to the ``.json``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from sadcl import distributed as D
from sadcl.data.run_loaders import build_eval_loader
from sadcl.inference.open import TrainedModel, open_model
from sadcl.inference.postprocess import probabilities
from sadcl.io import atomic_write_bytes, atomic_write_text
from sadcl.models import label_features
from sadcl.training.engine import memory_format, place_model

if TYPE_CHECKING:
    from sadcl.config import Config, DataConfig

logger = logging.getLogger(__name__)

RULES = ("official", "mean_selected", "kmeans")
FALLBACKS = ("mean_positives", "error")
NEAR_ZERO = 0.1
"""A prototype row is "near zero" when its norm is below this fraction of the median norm of the non-zero rows."""


def prototype_health(prototypes: Tensor, class_names: list[str] | None = None) -> dict[str, Any]:
    """Norms of the prototype rows and the classes whose rows are zero or near zero.

    Args:
        prototypes: ``[C, d]``.
        class_names: C names (default: the class indices as strings).

    Returns:
        ``{"norms": [C], "median_norm", "zero": [names], "near_zero": [names]}``.
    """
    norms = prototypes.float().norm(dim=1)
    names = class_names or [str(c) for c in range(len(norms))]
    nonzero = norms[norms > 0]
    median = float(nonzero.median()) if len(nonzero) else 0.0
    zero = [n for n, v in zip(names, norms.tolist()) if v == 0.0]
    near = [n for n, v in zip(names, norms.tolist()) if 0.0 < v < NEAR_ZERO * median]
    return {"norms": [round(v, 6) for v in norms.tolist()], "median_norm": median, "zero": zero, "near_zero": near}


def prototypes_from_features(
    features: Tensor,
    logits: Tensor,
    targets: Tensor,
    *,
    threshold: float = 0.85,
    rule: str = "official",
    k: int = 3,
    kmeans_iters: int = 20,
    fallback: str = "mean_positives",
    class_names: list[str] | None = None,
) -> tuple[Tensor, dict]:
    """Apply a prototype rule to collected outputs.

    Args:
        features: label-level features [N, C, d].
        logits: [N, C].
        targets: ground truth [N, C] (1 = positive).
        threshold: τ on σ(logit).
        rule: one of ``RULES``.
        k: clusters for ``kmeans``.
        kmeans_iters: Lloyd iterations for ``kmeans``.
        fallback: What a class without a selected feature gets: ``'mean_positives'`` or ``'error'``.
        class_names: C names for the messages (default: indices).

    Returns:
        prototypes [C, d] float32, and ``{"positives": [C] ints, "selected": [C] ints, "fallback": [names],
        "absent": [names]}``.

    Raises:
        ValueError: ``fallback='error'`` and a class with positives has none above the threshold.
    """
    if rule not in RULES:
        raise ValueError(f"unknown prototype rule {rule!r}; choose one of {', '.join(RULES)}")
    if fallback not in FALLBACKS:
        raise ValueError(f"unknown prototype fallback {fallback!r}; choose one of {', '.join(FALLBACKS)}")
    names = class_names or [str(c) for c in range(features.shape[1])]
    features = features.float()
    pos = targets > 0.5  # [N, C]
    sel = pos & (probabilities(logits) > threshold)  # [N, C]
    n_pos = pos.sum(0)  # [C]
    n_sel = sel.sum(0)  # [C]
    if rule == "official":
        summed = (features * sel.unsqueeze(-1).float()).sum(0)  # [C, d]
        protos = summed / n_pos.clamp(min=1).unsqueeze(-1).float()
    elif rule == "mean_selected":
        summed = (features * sel.unsqueeze(-1).float()).sum(0)
        protos = summed / n_sel.clamp(min=1).unsqueeze(-1).float()
    else:
        protos = torch.zeros(features.shape[1], features.shape[2])
        for c in range(features.shape[1]):
            x = features[sel[:, c], c]  # [n_c, d]
            if len(x):
                protos[c] = _largest_cluster_centroid(x, k=k, iters=kmeans_iters)
    absent = [names[c] for c in range(features.shape[1]) if n_pos[c] == 0]
    if absent:  # nothing to average: the row stays zero, and PSCL passes no gradient through it
        logger.warning(
            "%d classes have no positive at all in the prototype split; their prototypes stay zero "
            "(PSCL ignores them): %s",
            len(absent),
            ", ".join(absent[:20]),
        )
    empty = [c for c in range(features.shape[1]) if n_sel[c] == 0 and n_pos[c] > 0]
    if empty:
        listed = ", ".join(names[c] for c in empty[:20]) + (", ..." if len(empty) > 20 else "")
        if fallback == "error":
            raise ValueError(
                f"{len(empty)} of {features.shape[1]} classes have no positive with σ(logit) > "
                f"{threshold:.2f}, so their prototypes would be zero: {listed}. Train stage 1 longer, "
                "lower train.prototype_threshold, or set train.prototype_fallback=mean_positives"
            )
        for c in empty:
            protos[c] = features[pos[:, c], c].mean(0)
        logger.warning(
            "%d of %d classes have no positive with σ(logit) > %.2f; their prototypes are the mean of all "
            "their positives instead of zero: %s",
            len(empty),
            features.shape[1],
            threshold,
            listed,
        )
    return protos, {
        "positives": n_pos.tolist(),
        "selected": n_sel.tolist(),
        "fallback": [names[c] for c in empty],
        "absent": absent,
    }


def _largest_cluster_centroid(x: Tensor, *, k: int, iters: int) -> Tensor:
    """Centroid of the largest of k clusters of x [n, d] (deterministic: init from the first k rows)."""
    k = min(k, len(x))
    centers = x[:k].clone()
    for _ in range(iters):
        assign = torch.cdist(x, centers).argmin(1)  # [n]
        for j in range(k):
            if (assign == j).any():
                centers[j] = x[assign == j].mean(0)
    assign = torch.cdist(x, centers).argmin(1)
    return centers[torch.bincount(assign, minlength=k).argmax()]


@torch.no_grad()
def compute_prototypes(
    model: nn.Module,
    loader: Iterable,
    *,
    device: torch.device | str = "cpu",
    threshold: float = 0.85,
    rule: str = "official",
    k: int = 3,
    fallback: str = "mean_positives",
    class_names: list[str] | None = None,
) -> tuple[Tensor, dict]:
    """Run a stage-1 model over a loader (training split, eval transform) and build prototypes.

    Args:
        model: returns ``{"logits": [B, C], "features": [B, C, d]}``; put in eval mode here, the bank is untouched.
        loader: yields ``(images, targets)`` or ``(images, targets, ignore)``: unknown labels are not positives.
        device: where to run.
        threshold: τ on σ(logit).
        rule: see the module docstring.
        k: clusters for ``kmeans``.
        fallback: See :func:`prototypes_from_features`.
        class_names: C names for the messages.

    Returns:
        prototypes [C, d] and per-class counts ``{"positives", "selected", "fallback"}``.
    """
    model.eval()
    fmt = memory_format(model)
    feats, logits, targets = [], [], []
    for batch in loader:
        images, target = batch[0], batch[1].float()
        if len(batch) > 2:  # only known positives enter a prototype
            target = target.masked_fill(batch[2].bool(), 0)
        out = model(images.to(device, memory_format=fmt))
        feats.append(label_features(out).float().cpu())
        logits.append(out["logits"].float().cpu())
        targets.append(target.cpu())
    return prototypes_from_features(
        torch.cat(feats),
        torch.cat(logits),
        torch.cat(targets),
        threshold=threshold,
        rule=rule,
        k=k,
        fallback=fallback,
        class_names=class_names,
    )


def save_prototypes(prototypes: Tensor, path: str | Path) -> Path:
    """Save prototypes [C, d] as float32 ``.npy`` (atomically); as ``np.save``, ``.npy`` is appended when missing.

    Returns:
        The path written.
    """
    path = Path(path)
    if path.suffix != ".npy":
        path = path.with_name(path.name + ".npy")
    buf = io.BytesIO()
    np.save(buf, prototypes.detach().cpu().numpy().astype(np.float32))
    return atomic_write_bytes(path, buf.getvalue())


def build_prototypes(
    checkpoint: str | Path | TrainedModel,
    *,
    out: str | Path,
    threshold: float = 0.85,
    rule: str = "official",
    split: str = "train",
    data: DataConfig | None = None,
    device: torch.device | str = "cpu",
    batch_size: int | None = None,
    k: int = 3,
    progress: bool = False,
    fallback: str = "mean_positives",
    reuse_cached_images: bool = False,
) -> tuple[Tensor, dict]:
    """Prototypes of a stage-1 checkpoint on a split (eval transform, no augmentation); writes ``out`` (.npy, [C, d])
    and ``out`` with suffix ``.json`` (rule, threshold and per-class counts of positives and selected features).

    Args:
        checkpoint: A stage-1 checkpoint (its validation-selected weights are used), or the model opened from it
            (:func:`sadcl.inference.open.open_model`).
        out: Output ``.npy`` path.
        threshold: τ on σ(logit).
        rule: See the module docstring.
        split: The split to average over (the training split, as official).
        data: A ``DataConfig`` to read the split from (default: the checkpoint's).
        device: Where to run the model.
        batch_size: Default: the data config's eval (or train) batch size.
        k: Clusters for ``kmeans``.
        progress: Show a progress bar.
        fallback: See :func:`prototypes_from_features`.
        reuse_cached_images: Read the split from the process's decoded-image cache when it holds it at the eval
            size (a run's prototype pass after a stage 1 with ``flip`` or ``none``; ``crop`` caches a larger resize);
            it never fills the cache: otherwise the files are read once.

    Returns:
        prototypes [C, d] and ``{"positives": [C], "selected": [C], "fallback": [names], "health": {...}}``.
    """
    trained = checkpoint if isinstance(checkpoint, TrainedModel) else open_model(checkpoint)
    model, cfg, class_names = trained.torch_model("prototypes"), trained.config, trained.class_names
    if data is not None:
        cfg = dataclasses.replace(cfg, data=data)
    # Every image in this process (rank 0 builds the prototypes for all ranks).
    loader = build_eval_loader(cfg, split, class_names=class_names, batch_size=batch_size, shard=False)
    dataset = loader.dataset
    if reuse_cached_images:  # one pass: the split from RAM if stage 1 holds it at this size, never a new copy
        dataset.cache_images(what=f"the {split!r} split", fill=False)
    class_names = class_names or list(dataset.class_names)
    if progress:
        from sadcl.progress import progress_bar

        loader = progress_bar(loader, desc="prototypes", unit="batch")
    protos, counts = compute_prototypes(
        place_model(model, device=device, channels_last=cfg.train.channels_last),  # as the run trained it
        loader,
        device=device,
        threshold=threshold,
        rule=rule,
        k=k,
        fallback=fallback,
        class_names=class_names,
    )
    health = prototype_health(protos, class_names)
    counts["health"] = health
    out = save_prototypes(protos, out)
    report = {
        "checkpoint": str(trained.path),
        "split": split,
        "rule": rule,
        "threshold": threshold,
        "fallback_rule": fallback,
        "shape": list(protos.shape),
        "health": {
            "zero": health["zero"],
            "near_zero": health["near_zero"],
            "fallback": counts["fallback"],
            "absent": counts["absent"],
            "median_norm": health["median_norm"],
        },
        "per_class": {
            name: {"positives": int(p), "selected": int(s), "norm": nrm}
            for name, p, s, nrm in zip(class_names, counts["positives"], counts["selected"], health["norms"])
        },
    }
    atomic_write_text(out.with_suffix(".json"), json.dumps(report, indent=2))
    logger.info(
        "prototypes %s -> %s (%s rule, τ=%.2f): %d/%d classes fell back to the mean of their positives, "
        "%d near-zero rows%s",
        list(protos.shape),
        out,
        rule,
        threshold,
        len(counts["fallback"]),
        len(class_names),
        len(health["near_zero"]),
        f" ({', '.join(health['near_zero'][:10])})" if health["near_zero"] else "",
    )
    return protos, counts


def build_run_prototypes(cfg: Config, init: Path, *, out: Path, device: torch.device | str, reuse: bool) -> Path:
    """The prototypes file stage 2 of a run trains with (docs/spec.md §3.1), built from the stage-1 model when needed.

    ``model.prototypes``, when set, is used as given; otherwise rank 0 builds ``out`` from ``init`` on the training
    split with the ``train.prototype_*`` settings (every rank waits for it), or reuses it when ``reuse`` (a resumed
    run) and it exists.

    Args:
        cfg: The run configuration.
        init: The stage-1 checkpoint stage 2 starts from.
        out: Where the run keeps its prototypes (``RUN/prototypes.npy``).
        device: Where to run the stage-1 model.
        reuse: Keep an existing ``out`` instead of rebuilding it.

    Returns:
        The prototypes file.

    Raises:
        FileNotFoundError: ``init`` does not exist.
    """
    if not init.is_file():
        raise FileNotFoundError(
            f"stage 2 starts from the stage-1 model, but {init} does not exist: run the "
            "baseline stage first or pass a baseline checkpoint"
        )
    if cfg.model.prototypes:
        return Path(cfg.model.prototypes)
    if not (reuse and out.is_file()):
        if D.is_main_process():
            build_prototypes(
                init,
                out=out,
                threshold=cfg.train.prototype_threshold,
                rule=cfg.train.prototype_rule,
                fallback=cfg.train.prototype_fallback,
                split=cfg.data.train_split,
                data=cfg.data,
                device=device,
                progress=cfg.train.progress,
                reuse_cached_images=cfg.data.cache_images,
            )
        D.barrier()
    return out
