"""What the model looks at and how its label-level features cluster.

Attention: the model's ``attn [B, C, h, w]`` is the last decoder layer's cross-attention of each label query over the
feature map (averaged over heads; each map sums to 1). It is upsampled bilinearly to the input size (a convex
interpolation, so the maps stay non-negative) and drawn over the image. :func:`attention_in_box_fraction` measures how
much of a label's attention mass falls inside that object's box; :func:`attention_box_score` averages it over a
dataset whose samples carry boxes (MOM-30 records them).

Embeddings: :func:`collect_label_features` takes the feature of every (image, true label) pair,
:func:`embedding_tsne` draws them with t-SNE coloured by class, and :func:`separation_score` gives one number
(cosine silhouette) to compare a baseline with SADCL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = [
    "AttentionResult",
    "LabelAttention",
    "attention_box_score",
    "attention_grid",
    "attention_in_box_fraction",
    "collect_label_features",
    "embedding_tsne",
    "label_attention",
    "overlay_attention",
    "plot_embedding_panels",
    "separation_score",
    "upsample_attention",
]

Box = tuple[float, float, float, float]


def upsample_attention(attn: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling of attention maps to an image size.

    Args:
        attn: ``[..., h, w]`` attention (e.g. ``[B, C, h, w]``).
        size: Target ``(H, W)``.

    Returns:
        ``[..., H, W]``, renormalised so that each map sums to the same mass as before.
    """
    lead = attn.shape[:-2]
    flat = attn.reshape(-1, 1, *attn.shape[-2:]).float()  # [N, 1, h, w]
    up = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    # Upsampling changes the total by the area ratio (and slightly at the borders); keep each map's original mass.
    mass = flat.sum(dim=(-2, -1), keepdim=True)
    up = up * (mass / up.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12))
    return up.reshape(*lead, *size)


def attention_in_box_fraction(attn_map: np.ndarray | Tensor, box: Box) -> float:
    """Fraction of a map's attention mass that lies inside a box.

    Args:
        attn_map: Non-negative ``[H, W]`` attention, already upsampled to the image the box refers to.
        box: ``(x0, y0, x1, y1)`` in pixels of that image; a pixel counts as inside when its centre is.

    Returns:
        ``mass inside / total mass`` in [0, 1] (0 for an all-zero map).
    """
    a = attn_map.detach().cpu().numpy() if isinstance(attn_map, Tensor) else np.asarray(attn_map)
    if a.ndim != 2:
        raise ValueError(f"attn_map must be [H, W], got shape {a.shape}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if x1 < x0 or y1 < y0:
        raise ValueError(f"box must be (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1, got {box}")
    total = float(a.sum())
    if total <= 0:
        return 0.0
    ys = np.arange(a.shape[0]) + 0.5
    xs = np.arange(a.shape[1]) + 0.5
    rows = (ys >= y0) & (ys < y1)
    cols = (xs >= x0) & (xs < x1)
    return float(a[np.ix_(rows, cols)].sum() / total)


def overlay_attention(
    image: Image.Image, attn_map: np.ndarray, *, alpha: float = 0.5, cmap: str = "jet"
) -> Image.Image:
    """Blend a colour-mapped attention map over an image.

    Args:
        image: RGB image; the map is resized to it.
        attn_map: ``[h, w]`` non-negative attention (any scale; min-max normalised for display).
        alpha: Weight of the heat map.
        cmap: Matplotlib colormap name.

    Returns:
        The blended RGB image, the size of ``image``.
    """
    from matplotlib import colormaps

    a = np.asarray(attn_map, dtype=np.float64)
    a = (a - a.min()) / max(a.max() - a.min(), 1e-12)
    heat = (colormaps[cmap](a)[..., :3] * 255).astype(np.uint8)
    heat_img = Image.fromarray(heat).resize(image.size, Image.BILINEAR)
    return Image.blend(image.convert("RGB"), heat_img, alpha)


@dataclass
class LabelAttention:
    """One label's score and attention on one image."""

    name: str
    index: int
    score: float
    attn: np.ndarray
    """``[H, W]`` attention upsampled to the model input (sums to ~1)."""
    overlay: Image.Image
    """The attention drawn over the display image."""


@dataclass
class AttentionResult:
    """Scores of every class and the attention of the selected labels for one image."""

    image: Image.Image
    """What the model saw (the transformed input, de-normalised when possible), at display size."""
    scores: np.ndarray
    """Probabilities [C]."""
    labels: list[LabelAttention]
    """The selected labels, highest score first."""


def _display_image(image: Image.Image, x: Tensor, transform: Any) -> Image.Image:
    """The model's input as a picture: de-normalise the tensor when the transform says how, else resize."""
    mean, std = getattr(transform, "mean", None), getattr(transform, "std", None)
    if mean is not None and std is not None:
        m = torch.as_tensor(mean, dtype=torch.float32).view(3, 1, 1)
        s = torch.as_tensor(std, dtype=torch.float32).view(3, 1, 1)
        pixels = ((x.float().cpu() * s + m).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        return Image.fromarray(pixels)
    return image.convert("RGB").resize((x.shape[-1], x.shape[-2]), Image.BILINEAR)


def _select(scores: np.ndarray, threshold: float | np.ndarray, top_k: int | None) -> list[int]:
    order = np.argsort(-scores, kind="stable")
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        return order[:top_k].tolist()
    chosen = [int(c) for c in order if scores[c] > np.broadcast_to(threshold, scores.shape)[c]]
    # Always show something: with nothing above threshold, the best guess is still the most informative map.
    return chosen or [int(order[0])]


@torch.inference_mode()
def label_attention(
    model: nn.Module,
    image: Image.Image,
    *,
    class_names: Sequence[str],
    transform: Callable[[Image.Image], Tensor],
    threshold: float | np.ndarray = 0.5,
    top_k: int | None = None,
    display_size: int = 256,
    alpha: float = 0.5,
) -> AttentionResult:
    """Run one image and return the attention of its predicted labels.

    Args:
        model: A model whose ``forward(images, return_attn=True)`` returns ``logits [B, C]`` and ``attn [B, C, h, w]``.
        image: The image (any mode; converted to RGB).
        class_names: The C class names.
        transform: Evaluation transform, PIL image -> ``[3, H, W]`` tensor (e.g. ``EvalPreset``).
        threshold: Labels with probability above it are shown (scalar or per class [C]); ignored with ``top_k``.
        top_k: Show the k highest-scoring labels instead.
        display_size: Longest side of the displayed images.
        alpha: Heat-map weight in the overlays.

    Returns:
        An :class:`AttentionResult`.
    """
    model.eval()
    device = next(model.parameters()).device
    image = image.convert("RGB")
    x = transform(image)
    out = model(x[None].to(device), return_attn=True)
    scores = torch.sigmoid(out["logits"][0].float()).cpu().numpy()
    if len(class_names) != scores.shape[0]:
        raise ValueError(f"{len(class_names)} class names for a model with {scores.shape[0]} classes")
    attn = upsample_attention(out["attn"][0].float().cpu(), (x.shape[-2], x.shape[-1])).numpy()  # [C, H, W]
    shown = _display_image(image, x, transform)
    scale = display_size / max(shown.size)
    shown = shown.resize((max(1, round(shown.width * scale)), max(1, round(shown.height * scale))), Image.BICUBIC)
    labels = [
        LabelAttention(
            name=class_names[c],
            index=c,
            score=float(scores[c]),
            attn=attn[c],
            overlay=overlay_attention(shown, attn[c], alpha=alpha),
        )
        for c in _select(scores, threshold, top_k)
    ]
    return AttentionResult(image=shown, scores=scores, labels=labels)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def attention_grid(
    model: nn.Module,
    image: Image.Image,
    *,
    class_names: Sequence[str],
    transform: Callable[[Image.Image], Tensor],
    threshold: float | np.ndarray = 0.5,
    top_k: int | None = None,
    display_size: int = 256,
    columns: int = 4,
) -> Image.Image:
    """The input image followed by one attention overlay per predicted label, captioned with name and score.

    Args:
        model: See :func:`label_attention`.
        image: The image.
        class_names: The C class names.
        transform: Evaluation transform, PIL image -> ``[3, H, W]``.
        threshold: Probability threshold (scalar or per class) for the labels shown; ignored with ``top_k``.
        top_k: Show the k highest-scoring labels instead.
        display_size: Longest side of each tile.
        columns: Tiles per row.

    Returns:
        The grid as one RGB image.
    """
    result = label_attention(
        model,
        image,
        class_names=class_names,
        transform=transform,
        threshold=threshold,
        top_k=top_k,
        display_size=display_size,
    )
    tiles = [(result.image, "input")] + [(la.overlay, f"{la.name} {la.score:.2f}") for la in result.labels]
    tile_w, tile_h = result.image.size
    caption_h = max(16, display_size // 10)
    font = _font(caption_h - 4)
    cols = min(columns, len(tiles))
    rows = -(-len(tiles) // cols)
    pad = 4
    grid = Image.new("RGB", (cols * (tile_w + pad) + pad, rows * (tile_h + caption_h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for i, (tile, caption) in enumerate(tiles):
        x = pad + (i % cols) * (tile_w + pad)
        y = pad + (i // cols) * (tile_h + caption_h + pad)
        grid.paste(tile, (x, y))
        draw.text((x + 2, y + tile_h + 2), caption, fill="black", font=font)
    return grid


@torch.inference_mode()
def attention_box_score(
    model: nn.Module,
    samples: Iterable[tuple[Tensor, Tensor, Sequence[tuple[int, Box]]]],
    *,
    threshold: float = 0.5,
    box_scale: float | tuple[float, float] = 1.0,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Average fraction of attention mass inside the true box, over predicted true labels.

    For every image and every class that is both predicted (probability > threshold) and true, the class's upsampled
    attention is compared with the union of that class's boxes (a class can occur once per image in MOM-30; with several
    boxes the fraction inside any of them is used).

    Args:
        model: See :func:`label_attention`.
        samples: ``(image [3, H, W], target [C], boxes)`` where ``boxes`` is a list of ``(class index, (x0, y0, x1,
            y1))`` in the coordinates of the original image.
        threshold: Probability threshold for "predicted".
        box_scale: Factor(s) ``(sx, sy)`` from original-image to input pixels (e.g. input size / canvas size).
        batch_size: Images per forward pass.

    Returns:
        ``{"mean_fraction", "num_pairs", "num_images", "mean_box_area_fraction" (the expected value for uniform
        attention), "per_class": {class index: mean fraction}}``.
    """
    model.eval()
    device = next(model.parameters()).device
    sx, sy = (box_scale, box_scale) if isinstance(box_scale, (int, float)) else box_scale
    fractions: list[float] = []
    areas: list[float] = []
    per_class: dict[int, list[float]] = {}
    num_images = 0

    def run(batch: list[tuple[Tensor, Tensor, Sequence[tuple[int, Box]]]]) -> None:
        x = torch.stack([b[0] for b in batch]).to(device)
        out = model(x, return_attn=True)
        probs = torch.sigmoid(out["logits"].float()).cpu()
        attn = upsample_attention(out["attn"].float().cpu(), (x.shape[-2], x.shape[-1]))  # [B, C, H, W]
        for i, (_, target, boxes) in enumerate(batch):
            hit = (probs[i] > threshold) & (torch.as_tensor(target) > 0.5)
            for c in hit.nonzero().flatten().tolist():
                cls_boxes = [b for k, b in boxes if k == c]
                if not cls_boxes:
                    continue
                mask = np.zeros(attn.shape[-2:], dtype=bool)
                for bx in cls_boxes:
                    mask |= _box_mask(mask.shape, (bx[0] * sx, bx[1] * sy, bx[2] * sx, bx[3] * sy))
                a = attn[i, c].numpy()
                frac = float(a[mask].sum() / max(a.sum(), 1e-12))
                fractions.append(frac)
                areas.append(float(mask.mean()))
                per_class.setdefault(c, []).append(frac)

    batch: list[tuple[Tensor, Tensor, Sequence[tuple[int, Box]]]] = []
    for sample in samples:
        batch.append(sample)
        num_images += 1
        if len(batch) == batch_size:
            run(batch)
            batch = []
    if batch:
        run(batch)
    if not fractions:
        logger.warning("attention_box_score: no predicted true label with a box in %d images", num_images)
    return {
        "mean_fraction": float(np.mean(fractions)) if fractions else float("nan"),
        "num_pairs": len(fractions),
        "num_images": num_images,
        "mean_box_area_fraction": float(np.mean(areas)) if areas else float("nan"),
        "per_class": {c: float(np.mean(v)) for c, v in sorted(per_class.items())},
    }


def _box_mask(shape: tuple[int, int], box: Box) -> np.ndarray:
    """Pixels whose centre lies inside ``box`` (the rule of :func:`attention_in_box_fraction`)."""
    x0, y0, x1, y1 = box
    ys = np.arange(shape[0]) + 0.5
    xs = np.arange(shape[1]) + 0.5
    return ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]


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
        f = model(x)["features"].float().cpu()  # [B, C, d]
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


def eval_transform(config: Any) -> Callable[[Image.Image], Tensor]:
    """The evaluation transform of a run (``EvalPreset``), with ``mean``/``std`` attributes for de-normalising."""
    from sadcl.data.transforms import EvalPreset, resolve_normalization

    mean, std = resolve_normalization(getattr(config.data, "normalization", "imagenet"), config.model.backbone)
    preset = EvalPreset(img_size=config.model.img_size, mean=mean, std=std)
    preset.mean, preset.std = mean, std  # read by _display_image and the ONNX metadata
    return preset


def mom30_box_samples(
    config: Any, split: str, transform: Callable[[Image.Image], Tensor], *, limit: int | None = None
) -> tuple[Iterable[tuple[Tensor, Tensor, list[tuple[int, Box]]]], tuple[float, float]]:
    """MOM-30 samples with their boxes for :func:`attention_box_score`.

    Args:
        config: The run's Config (``data.format`` must be ``mom30``).
        split: Dataset split.
        transform: Evaluation transform.
        limit: At most this many images.

    Returns:
        ``(samples, box_scale)``: an iterator of ``(image [3, H, W], target [C], [(class, (x0, y0, x1, y1)), ...])``
        and the canvas -> input scale factors.
    """
    from sadcl.data import build_dataset

    if getattr(config.data, "format", None) != "mom30":
        raise ValueError(f"attention-in-box needs MOM-30 boxes; this run uses data.format={config.data.format!r}")
    dataset = build_dataset(config.data, split, transform)
    index = {name: i for i, name in enumerate(dataset.class_names)}
    n = len(dataset) if limit is None else min(limit, len(dataset))
    with Image.open(dataset.paths[0]) as im:
        canvas_w, canvas_h = im.size
    x0 = dataset[0][0]
    scale = (x0.shape[-1] / canvas_w, x0.shape[-2] / canvas_h)

    def samples() -> Iterable[tuple[Tensor, Tensor, list[tuple[int, Box]]]]:
        for i in range(n):
            image, target = dataset[i][:2]
            boxes = [
                (index[b[4]], (float(b[0]), float(b[1]), float(b[2]), float(b[3])))
                for b in dataset.info[i].get("boxes", [])
                if b[4] in index
            ]
            yield image, torch.as_tensor(target), boxes

    return samples(), scale
