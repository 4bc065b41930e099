"""Category prototypes from a stage-1 (baseline) model (SPEC §1.11).

Rules, for class c with ground-truth positives P_c (N_c = |P_c|) and selected set S_c = {i in P_c : σ(logit_ic) > τ}:

- ``official`` (inferred from the official code): p_c = (1 / N_c) Σ_{i ∈ P_c} 1[σ(logit_ic) > τ] · f_ic.
  The divisor counts every ground-truth positive, so a class with few confident positives gets a shorter prototype.
- ``mean_selected``: p_c = mean of f_ic over S_c.
- ``kmeans``: k-means (k clusters, deterministic init from the first k selected features) over S_c; the centroid of
  the largest cluster is kept as p_c.

A class with no selected feature gets a zero prototype (logged as a warning).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

RULES = ("official", "mean_selected", "kmeans")


def prototypes_from_features(features: Tensor, logits: Tensor, targets: Tensor, *, threshold: float = 0.85,
                             rule: str = "official", k: int = 3, kmeans_iters: int = 20) -> tuple[Tensor, dict]:
    """Apply a prototype rule to collected outputs.

    Args:
        features: label-level features [N, C, d].
        logits: [N, C].
        targets: ground truth [N, C] (1 = positive).
        threshold: τ on σ(logit).
        rule: one of ``RULES``.
        k: clusters for ``kmeans``.
        kmeans_iters: Lloyd iterations for ``kmeans``.

    Returns:
        prototypes [C, d] float32, and ``{"positives": [C] ints, "selected": [C] ints}``.
    """
    if rule not in RULES:
        raise ValueError(f"unknown prototype rule {rule!r}; choose one of {', '.join(RULES)}")
    features = features.float()
    pos = targets > 0.5  # [N, C]
    sel = pos & (torch.sigmoid(logits.float()) > threshold)  # [N, C]
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
    empty = [c for c in range(features.shape[1]) if n_sel[c] == 0]
    if empty:
        logger.warning("%d classes have no positive with σ(logit) > %.2f; their prototypes are zero: %s",
                       len(empty), threshold, empty[:20])
    return protos, {"positives": n_pos.tolist(), "selected": n_sel.tolist()}


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
def compute_prototypes(model: nn.Module, loader, *, device: torch.device | str = "cpu", threshold: float = 0.85,
                       rule: str = "official", k: int = 3) -> tuple[Tensor, dict]:
    """Run a stage-1 model over a loader (training split, eval transform) and build prototypes.

    Args:
        model: returns ``{"logits": [B, C], "features": [B, C, d]}``; put in eval mode here, the bank is untouched.
        loader: yields ``(images, targets)``.
        device: where to run.
        threshold: τ on σ(logit).
        rule: see the module docstring.
        k: clusters for ``kmeans``.

    Returns:
        prototypes [C, d] and per-class counts ``{"positives", "selected"}``.
    """
    model.eval()
    feats, logits, targets = [], [], []
    for batch in loader:
        images, target = batch[0], batch[1]
        out = model(images.to(device))
        feats.append(out["features"].float().cpu())
        logits.append(out["logits"].float().cpu())
        targets.append(target.float().cpu())
    return prototypes_from_features(torch.cat(feats), torch.cat(logits), torch.cat(targets), threshold=threshold,
                                    rule=rule, k=k)


def save_prototypes(prototypes: Tensor, path: str | Path) -> Path:
    """Save prototypes [C, d] as float32 ``.npy``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, prototypes.detach().cpu().numpy().astype(np.float32))
    return path


def build_prototypes(checkpoint: str | Path, *, out: str | Path, threshold: float = 0.85, rule: str = "official",
                     split: str = "train", data: Any = None, device: torch.device | str = "cpu",
                     batch_size: int | None = None, k: int = 3, progress: bool = False) -> tuple[Tensor, dict]:
    """Prototypes of a stage-1 checkpoint on a split (eval transform, no augmentation); writes ``out`` (.npy, [C, d])
    and ``out`` with suffix ``.json`` (rule, threshold and per-class counts of positives and selected features).

    Args:
        checkpoint: A stage-1 checkpoint (its validation-selected weights are used).
        out: Output ``.npy`` path.
        threshold: τ on σ(logit).
        rule: See the module docstring.
        split: The split to average over (the training split, as official).
        data: A ``DataConfig`` to read the split from (default: the checkpoint's).
        device: Where to run the model.
        batch_size: Default: the data config's eval (or train) batch size.
        k: Clusters for ``kmeans``.
        progress: Show a progress bar.

    Returns:
        prototypes [C, d] and ``{"positives": [C], "selected": [C]}``.
    """
    from sadcl.checkpoint import load_model
    from sadcl.data import build_dataset, build_loader
    from sadcl.data.transforms import build_transforms

    model, cfg, class_names = load_model(checkpoint)
    data = data if data is not None else cfg.data
    _, eval_tf = build_transforms(data, img_size=cfg.model.img_size, backbone=cfg.model.backbone)
    dataset = build_dataset(data, split, eval_tf)
    class_names = class_names or list(dataset.class_names)
    loader = build_loader(dataset, batch_size=batch_size or data.eval_batch_size or data.batch_size,
                          workers=data.workers)
    if progress:
        from tqdm import tqdm

        loader = tqdm(loader, desc="prototypes", leave=False)
    protos, counts = compute_prototypes(model.to(device), loader, device=device, threshold=threshold, rule=rule, k=k)
    out = save_prototypes(protos, out)
    report = {"checkpoint": str(checkpoint), "split": split, "rule": rule, "threshold": threshold,
              "shape": list(protos.shape),
              "per_class": {name: {"positives": int(p), "selected": int(s)}
                            for name, p, s in zip(class_names, counts["positives"], counts["selected"])}}
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    empty = sum(1 for s in counts["selected"] if s == 0)
    logger.info("prototypes %s -> %s (%s rule, τ=%.2f; %d/%d classes without a selected feature)", list(protos.shape),
                out, rule, threshold, empty, len(counts["selected"]))
    return protos, counts
