"""Label attention: what each label query looks at, as maps, overlays and an in-box score.

The model's ``attn [B, C, h, w]`` is the last decoder layer's cross-attention of each label query over the feature map
(averaged over heads; each map sums to 1). It is upsampled bilinearly to the input size (a convex interpolation, so
the maps stay non-negative) and drawn over the image. :func:`attention_in_box_fraction` measures how much of a label's
attention mass falls inside that object's box; :func:`attention_box_score` averages it over a dataset whose samples
carry boxes (MOM-30 records them: :func:`sadcl.data.mom30.mom30_box_samples`). Which labels are shown follows the one
post-processing rule (:mod:`sadcl.inference.postprocess`), with at least one label filled up for display.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn

from sadcl.inference.postprocess import predicted_mask, probabilities, select

logger = logging.getLogger(__name__)

__all__ = [
    "AttentionResult",
    "Box",
    "LabelAttention",
    "attention_box_score",
    "attention_grid",
    "attention_in_box_fraction",
    "box_mask",
    "label_attention",
    "overlay_attention",
    "upsample_attention",
]

Box = tuple[float, float, float, float]
"""``(x0, y0, x1, y1)`` in pixels; a pixel is inside when its centre is."""


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
    return float(a[box_mask(a.shape, (x0, y0, x1, y1))].sum() / total)


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


@torch.inference_mode()
def label_attention(
    model: nn.Module | Any,
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
        model: A model whose ``forward(images, return_attn=True)`` returns ``logits [B, C]`` and ``attn [B, C, h, w]``,
            or a :class:`sadcl.inference.predict.Predictor` of one (its forward: the scores are ``sadcl predict``'s).
        image: The image (any mode; converted to RGB).
        class_names: The C class names.
        transform: Evaluation transform, PIL image -> ``[3, H, W]`` tensor (e.g. ``EvalPreset``).
        threshold: Labels with probability above it are shown (scalar or per class [C]).
        top_k: Show at most the k best of them (:func:`sadcl.inference.postprocess.select`); with none above threshold
            the best label is still shown (display fill-up), since its map is the most informative one.
        display_size: Longest side of the displayed images.
        alpha: Heat-map weight in the overlays.

    Returns:
        An :class:`AttentionResult`.
    """
    image = image.convert("RGB")
    x = transform(image)
    if isinstance(model, nn.Module):
        model.eval()
        out = model(x[None].to(next(model.parameters()).device), return_attn=True)
    else:
        out = model.outputs(x[None], return_attn=True)
    scores = probabilities(out["logits"][0]).cpu().numpy()
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
        for c in select(scores, threshold, top_k=top_k, min_labels=1)
    ]
    return AttentionResult(image=shown, scores=scores, labels=labels)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def attention_grid(result: AttentionResult, *, columns: int = 4) -> Image.Image:
    """The input image followed by one attention overlay per label of a :func:`label_attention` result, captioned
    with name and score.

    Args:
        result: What :func:`label_attention` returned (its ``display_size`` sets the tile size).
        columns: Tiles per row.

    Returns:
        The grid as one RGB image.
    """
    tiles = [(result.image, "input")] + [(la.overlay, f"{la.name} {la.score:.2f}") for la in result.labels]
    tile_w, tile_h = result.image.size
    caption_h = max(16, max(tile_w, tile_h) // 10)
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
        probs = probabilities(out["logits"]).cpu()
        attn = upsample_attention(out["attn"].float().cpu(), (x.shape[-2], x.shape[-1]))  # [B, C, H, W]
        for i, (_, target, boxes) in enumerate(batch):
            hit = torch.from_numpy(predicted_mask(probs[i].numpy(), threshold)) & (torch.as_tensor(target) > 0.5)
            for c in hit.nonzero().flatten().tolist():
                cls_boxes = [b for k, b in boxes if k == c]
                if not cls_boxes:
                    continue
                mask = np.zeros(attn.shape[-2:], dtype=bool)
                for bx in cls_boxes:
                    mask |= box_mask(mask.shape, (bx[0] * sx, bx[1] * sy, bx[2] * sx, bx[3] * sy))
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


def box_mask(shape: tuple[int, int], box: Box) -> np.ndarray:
    """The one box rule: a bool ``[H, W]`` mask of the pixels whose centre lies inside ``box`` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    ys = np.arange(shape[0]) + 0.5
    xs = np.arange(shape[1]) + 0.5
    return ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
