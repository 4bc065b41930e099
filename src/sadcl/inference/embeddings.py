"""Label-level embeddings: collect the features of true labels, t-SNE panels, and a separation score.

:func:`collect_label_features` takes the feature of every (image, true label) pair, :func:`embedding_tsne` draws them
with t-SNE coloured by class, and :func:`separation_score` gives one number (cosine silhouette) to compare a baseline
with SADCL.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sadcl.models import label_features

logger = logging.getLogger(__name__)

__all__ = ["collect_label_features", "embedding_tsne", "plot_embedding_panels", "separation_score"]


@torch.inference_mode()
def collect_label_features(
    model: nn.Module,
    dataset: Any,
    *,
    n: int = 2000,
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """Label-level features of the true labels of a dataset's images, in dataset order.

    Args:
        model: A model whose output has ``features [B, C, d]``.
        dataset: ``ds[i] -> (image [3, H, W], target [C])`` (already transformed).
        n: Stop after this many (image, true label) features.
        batch_size: Images per forward pass.

    Returns:
        ``(features [M, d] float32, labels [M] int64)`` with ``M = min(n, number of true labels)``.
    """
    model.eval()
    device = next(model.parameters()).device
    feats: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    count = 0
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        x = torch.stack([it[0] for it in items]).to(device)
        targets = torch.stack([torch.as_tensor(it[1]) for it in items]) > 0.5  # [B, C]
        f = label_features(model(x)).float().cpu()  # [B, C, d]
        b_idx, c_idx = targets.nonzero(as_tuple=True)
        feats.append(f[b_idx, c_idx].numpy())
        labels.append(c_idx.numpy())
        count += len(c_idx)
        if count >= n:
            break
    if not feats:
        raise ValueError("the dataset is empty")
    return np.concatenate(feats)[:n], np.concatenate(labels)[:n].astype(np.int64)


def _l2(features: np.ndarray) -> np.ndarray:
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def separation_score(features: np.ndarray, labels: np.ndarray) -> float:
    """Cosine silhouette of the features grouped by class, in [-1, 1] (higher = tighter, better separated classes).

    Args:
        features: ``[N, d]``.
        labels: ``[N]`` class indices (at least 2 distinct).
    """
    from sklearn.metrics import silhouette_score

    if len(np.unique(labels)) < 2:
        raise ValueError("separation_score needs at least two classes")
    return float(silhouette_score(features, labels, metric="cosine"))


def _tsne(features: np.ndarray, *, perplexity: float, seed: int, normalize: bool) -> np.ndarray:
    from sklearn.manifold import TSNE

    x = _l2(features) if normalize else features
    perplexity = min(perplexity, max(1.0, (len(x) - 1) / 3))  # sklearn requires perplexity < n_samples
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
    return tsne.fit_transform(x.astype(np.float32))


def plot_embedding_panels(
    panels: Sequence[tuple[str, np.ndarray, np.ndarray]],
    out_png: str | Path,
    *,
    class_names: Sequence[str] | None = None,
    perplexity: float = 30.0,
    seed: int = 0,
    normalize: bool = True,
) -> list[np.ndarray]:
    """t-SNE of several feature sets side by side (e.g. baseline vs SADCL), coloured by class.

    Args:
        panels: ``(title, features [N, d], labels [N])`` per panel.
        out_png: Output image.
        class_names: Names for the legend (indexed by label).
        perplexity: t-SNE perplexity (lowered automatically for small N).
        seed: t-SNE random state.
        normalize: L2-normalise features first (the contrastive losses compare directions, not lengths).

    Returns:
        The 2-D embedding ``[N, 2]`` of each panel.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot's import
    import matplotlib.pyplot as plt

    coords = [_tsne(f, perplexity=perplexity, seed=seed, normalize=normalize) for _, f, _ in panels]
    num_classes = int(max(int(lab.max()) for _, _, lab in panels)) + 1
    # 30 MOM-30 classes need more distinct colours than one qualitative map has.
    palette = [*plt.get_cmap("tab20").colors, *plt.get_cmap("tab20b").colors, *plt.get_cmap("Set1").colors]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels) + 2.5, 6.5), squeeze=False)
    for ax, (title, _, lab), xy in zip(axes[0], panels, coords):
        for c in range(num_classes):
            sel = lab == c
            if sel.any():
                name = class_names[c] if class_names is not None else str(c)
                ax.scatter(xy[sel, 0], xy[sel, 1], s=5, color=palette[c % len(palette)], label=name)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    handles, names = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, names, loc="center right", fontsize=7, markerscale=2.5, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 2.3 / fig.get_figwidth(), 1))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    logger.info("wrote %s", out_png)
    return coords


def embedding_tsne(
    features: np.ndarray,
    labels: np.ndarray,
    out_png: str | Path,
    *,
    class_names: Sequence[str] | None = None,
    title: str = "label-level features",
    perplexity: float = 30.0,
    seed: int = 0,
    normalize: bool = True,
) -> np.ndarray:
    """t-SNE scatter plot of label-level features coloured by class.

    Args:
        features: ``[N, d]``.
        labels: ``[N]`` class indices.
        out_png: Output image.
        class_names: Names for the legend.
        title: Plot title.
        perplexity: t-SNE perplexity.
        seed: t-SNE random state.
        normalize: L2-normalise features first.

    Returns:
        The 2-D embedding ``[N, 2]``.
    """
    features = np.asarray(features, dtype=np.float32)
    labels = np.asarray(labels)
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(f"expected features [N, d] and labels [N], got {features.shape} and {labels.shape}")
    return plot_embedding_panels(
        [(title, features, labels)],
        out_png,
        class_names=class_names,
        perplexity=perplexity,
        seed=seed,
        normalize=normalize,
    )[0]
