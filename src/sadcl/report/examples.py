"""Example errors of the worst classes as small thumbnails with that label's attention drawn over them.

For each of the ``classes`` lowest-AP classes: the ``per_kind`` highest-scoring false positives and lowest-scoring
false negatives. Each image goes through the model once more with ``return_attn=True``; the label's map is upsampled
and overlaid with the attention code of :mod:`sadcl.inference.attention`, and the result is a JPEG of at most ``size``
pixels (a few KB), so even a large split adds little to the page.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

__all__ = ["pick_examples", "render_examples"]


def pick_examples(
    per_class_ap: Sequence[float | None],
    probs: np.ndarray,
    pred: np.ndarray,
    pos: np.ndarray,
    keep: np.ndarray,
    *,
    classes: int = 4,
    per_kind: int = 3,
) -> list[dict[str, Any]]:
    """Which (image, class) errors to show.

    Args:
        per_class_ap: AP per class (None for classes without positives, never picked).
        probs: Probabilities [N, C].
        pred: Bool predictions [N, C].
        pos: Bool positives [N, C].
        keep: Bool known labels [N, C].
        classes: How many of the worst classes.
        per_kind: False positives and false negatives per class.

    Returns:
        ``[{"class": c, "kind": "FP" | "FN", "index": image index, "score": float}, ...]``, worst class first.
    """
    aps = np.array([np.inf if a is None else a for a in per_class_ap], dtype=np.float64)
    picked = []
    for c in np.argsort(aps, kind="stable")[:classes]:
        if not np.isfinite(aps[c]):
            break
        fp = np.flatnonzero(pred[:, c] & ~pos[:, c] & keep[:, c])
        fn = np.flatnonzero(~pred[:, c] & pos[:, c] & keep[:, c])
        fp = fp[np.argsort(-probs[fp, c], kind="stable")][:per_kind]  # the most confident hallucinations
        fn = fn[np.argsort(probs[fn, c], kind="stable")][:per_kind]  # the most confident misses
        picked += [{"class": int(c), "kind": "FP", "index": int(i), "score": float(probs[i, c])} for i in fp]
        picked += [{"class": int(c), "kind": "FN", "index": int(i), "score": float(probs[i, c])} for i in fn]
    return picked


@torch.inference_mode()
def render_examples(
    model: nn.Module,
    paths: Sequence[str],
    picked: list[dict[str, Any]],
    *,
    transform: Callable[[Image.Image], torch.Tensor],
    size: int = 128,
) -> list[dict[str, Any]]:
    """Add ``"image"`` (a ``data:image/jpeg`` URI of the attention overlay) to each picked example.

    Args:
        model: The model, whose ``forward(x, return_attn=True)`` gives ``attn [B, C, h, w]``.
        paths: Image files of the split, by index.
        picked: :func:`pick_examples` output.
        transform: The evaluation transform (with ``mean``/``std`` for de-normalising the display).
        size: Longest side of a thumbnail.
    """
    from sadcl.data.images import load_image
    from sadcl.inference.attention import overlay_attention, upsample_attention

    if not picked:
        return []
    model.eval()
    device = next(model.parameters()).device
    cache: dict[int, tuple[Image.Image, np.ndarray]] = {}
    out = []
    for ex in picked:
        i = ex["index"]
        if i not in cache:
            image = load_image(paths[i])
            x = transform(image)
            attn = model(x[None].to(device), return_attn=True)["attn"][0].float().cpu()  # [C, h, w]
            shown = image.resize(_fit(image.size, size), Image.BILINEAR)
            cache[i] = (shown, upsample_attention(attn, (shown.height, shown.width)).numpy())
        shown, maps = cache[i]
        overlay = overlay_attention(shown, maps[ex["class"]], alpha=0.45)
        buf = io.BytesIO()
        overlay.save(buf, format="JPEG", quality=80)
        out.append({**ex, "image": "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")})
    return out


def _fit(wh: tuple[int, int], size: int) -> tuple[int, int]:
    scale = size / max(wh)
    return max(1, round(wh[0] * scale)), max(1, round(wh[1] * scale))
