"""The plain head: global average pooling + one linear layer on the backbone's map (``model.head: linear``).

This is what a user writes without SADCL (timm's classifier trained with ASL): the bar every other head must clear.
It has no label-level features, so the contrastive terms (SSCL, PSCL), the memory bank and prototypes do not apply.
Its attention map is the class activation map (Zhou et al., 2016): the class's linear weights applied at every
location, softmaxed over the locations, so attention overlays work for it as for the query heads.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["PlainClassifier"]


class PlainClassifier(nn.Module):
    """Backbone -> global average pooling -> linear.

    Args:
        backbone: Feature extractor with ``num_channels`` and ``stride`` attributes (usually
            :class:`~sadcl.models.backbone.Backbone`).
        num_classes: Number of labels C.

    Attributes:
        contrastive: Always False (kept so code that asks a model whether it is contrastive works with every head).
    """

    contrastive = False

    def __init__(self, *, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.backbone = backbone
        self.fc = nn.Linear(int(backbone.num_channels), num_classes)

    def forward(self, images: Tensor, return_attn: bool = False) -> dict[str, Tensor]:
        """Classify a batch.

        Args:
            images: ``[B, 3, H, W]``.
            return_attn: Add the class activation maps.

        Returns:
            ``logits [B, C]``; with ``return_attn``: ``attn [B, C, h, w]`` (each map sums to 1).
        """
        feat = self.backbone(images)  # [B, D, h, w]
        out = {"logits": self.fc(feat.mean(dim=(2, 3)))}
        if return_attn:
            b, _, h, w = feat.shape
            cam = torch.einsum("bdhw,cd->bchw", feat, self.fc.weight.to(feat.dtype))
            out["attn"] = cam.reshape(b, self.num_classes, h * w).softmax(-1).reshape(b, self.num_classes, h, w)
        return out
