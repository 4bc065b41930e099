"""CSRA, Class-Specific Residual Attention (Zhu & Wu, ICCV 2021, "Residual Attention: A Simple but Effective Method
for Multi-Label Recognition", arXiv 2108.02456): ``model.head: csra``.

Per class c, a 1x1 convolution (no bias) scores every location i of the backbone's map x:
``s_i^c = w_c^T x_i / ||w_c||``. The base logit is the mean of the scores over the locations (average pooling
followed by the normalised classifier); the residual attention logit is their softmax-weighted sum,
``sum_i softmax_i(T s^c) s_i^c`` (T = infinity: the maximum). ``logit_c = base_c + lambda * attention_c``; with
several heads each has its own classifier and temperature, and their logits are summed.

Label-level features (what SSCL, PSCL and the prototypes read, ``features [B, C, D]``, D = the backbone's channels):
both terms are linear in the map, so head h's logit is its normalised classifier applied to one vector per class,
``f_c^h = mean_i x_i + lambda * sum_i softmax_i(T_h s_i^{h,c}) x_i`` (T = infinity: the x_i at the argmax), and
``logit_c = sum_h (w_c^h / ||w_c^h||) . f_c^h``. The model's feature is the heads' average,
``f_c = mean_h f_c^h = mean_i x_i + lambda * sum_i (mean_h a_i^{h,c}) x_i`` with ``a^{h,c}`` head h's attention
weights. With one head, ``logit_c = (w_c / ||w_c||) . f_c`` exactly. With several, ``f_c`` gives the logit exactly
when lambda = 0 (``logit_c = (sum_h w_c^h / ||w_c^h||) . f_c``); with lambda > 0 no one vector does (each head pools
with its own attention): ``f_c`` is the mean of the vectors the heads classify, each of which is
``f_c^h = f_c + lambda * sum_i (a_i^{h,c} - mean_h' a_i^{h',c}) x_i``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from sadcl.models.contrastive import ContrastiveModel

__all__ = ["CSRA_TEMPERATURES", "CSRAClassifier", "csra_temperatures"]

CSRA_TEMPERATURES: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    2: (1.0, math.inf),
    4: (1.0, 2.0, 3.0, math.inf),
    6: (1.0, 2.0, 3.0, 4.0, 5.0, math.inf),
    8: (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, math.inf),
}
"""The paper's temperatures per number of heads (its T = 99 stands for infinity: max pooling). The official code
uses (1, 2, 4, 99) for four heads."""


def csra_temperatures(num_heads: int) -> tuple[float, ...]:
    """The paper's temperatures for ``num_heads`` heads (1, 2, 4, 6 or 8).

    Raises:
        ValueError: Another number of heads.
    """
    if num_heads not in CSRA_TEMPERATURES:
        raise ValueError(f"CSRA has temperature settings for {sorted(CSRA_TEMPERATURES)} heads, got {num_heads}")
    return CSRA_TEMPERATURES[num_heads]


def _is_max(temperature: float) -> bool:
    return math.isinf(temperature) or temperature == 99  # the official code's marker for infinity


class CSRAClassifier(ContrastiveModel):
    """Backbone -> class-specific residual attention (one or more heads).

    Args:
        backbone: Feature extractor with ``num_channels`` and ``stride`` attributes (usually
            :class:`~sadcl.models.backbone.Backbone`).
        num_classes: Number of labels C.
        temperatures: One softmax temperature per head (``math.inf`` or 99: max pooling); see
            :func:`csra_temperatures` for the paper's settings.
        lam: Weight lambda of the attention logit (the paper's COCO setting 0.1; it uses 0.3 on VOC).
        contrastive: Add SADCL's projection head, prototypes and memory bank on the label-level features (stage 2;
            :class:`~sadcl.models.contrastive.ContrastiveModel`, ``feature_dim`` = D).
        proj_dim: Projection size p.
        bank_slots: Memory-bank slots S.
        bank_threshold: Confidence a positive needs to be written to the bank (strict ``>``).
        prototype_momentum: None: learned prototypes (official); m in [0, 1): they follow the model
            (:meth:`~sadcl.models.contrastive.ContrastiveModel.update_prototypes`).

    Attributes:
        classifiers: One ``Conv2d(D, C, 1, bias=False)`` per head (official initialisation: PyTorch's default).
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        num_classes: int,
        temperatures: Sequence[float] = (1.0,),
        lam: float = 0.1,
        contrastive: bool = False,
        proj_dim: int = 1024,
        bank_slots: int = 32,
        bank_threshold: float = 0.8,
        prototype_momentum: float | None = None,
    ) -> None:
        super().__init__()
        if not temperatures or any(not t > 0 for t in temperatures):
            raise ValueError(f"temperatures must be one or more positive numbers, got {list(temperatures)}")
        if not lam >= 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        self.num_classes = num_classes
        self.temperatures = tuple(float(t) for t in temperatures)
        self.lam = lam
        self.backbone = backbone
        channels = int(backbone.num_channels)
        self.classifiers = nn.ModuleList(
            nn.Conv2d(channels, num_classes, kernel_size=1, bias=False) for _ in self.temperatures
        )
        self.init_contrastive(
            feature_dim=channels,
            contrastive=contrastive,
            proj_dim=proj_dim,
            bank_slots=bank_slots,
            bank_threshold=bank_threshold,
            prototype_momentum=prototype_momentum,
        )

    def _scores(self, x: Tensor, conv: nn.Conv2d) -> Tensor:
        """``x [B, D, L] -> s [B, C, L]``: each class's normalised classifier at every location."""
        w = conv.weight.flatten(1).to(x.dtype)  # [C, D]
        return torch.einsum("bdl,cd->bcl", x, w / w.norm(dim=1, keepdim=True))

    def forward(self, images: Tensor, return_attn: bool = False) -> dict[str, Tensor]:
        """Classify a batch.

        Args:
            images: ``[B, 3, H, W]``.
            return_attn: Add the first head's attention maps.

        Returns:
            ``logits [B, C]`` (the heads' sum); ``features [B, C, D]``: the class-specific feature vectors
            ``f_c = mean_i x_i + lambda * sum_i (mean_h a_i^{h,c}) x_i`` (the module docstring), D = the backbone's
            channels; with ``contrastive``: ``proj_features [B, C, p]``, ``proj_bank [S, C, p]``,
            ``proj_prototypes [C, p]``; with ``return_attn``: ``attn [B, C, h, w]``, the first head's softmax over the
            locations (each map sums to 1; one-hot at the maximum for T = infinity).
        """
        feat = self.backbone(images)  # [B, D, h, w]
        b, _, h, w = feat.shape
        x = feat.flatten(2)  # [B, D, L], L = h*w
        logits = 0
        weights_sum = 0  # the heads' attention weights, summed [B, C, L]
        first = torch.empty(0)  # the first head's attention weights [B, C, L]
        for i, (conv, t) in enumerate(zip(self.classifiers, self.temperatures)):
            s = self._scores(x, conv)  # [B, C, L]
            if _is_max(t):
                attn_logit = s.amax(-1)
                weights = nn.functional.one_hot(s.argmax(-1), s.shape[-1]).to(s.dtype)
            else:
                weights = (s * t).softmax(-1)
                attn_logit = (weights * s).sum(-1)
            logits = logits + s.mean(-1) + self.lam * attn_logit
            weights_sum = weights_sum + weights
            if i == 0:
                first = weights
        # mean_h (mean_i x_i + lam * sum_i a_i x_i): both terms are linear in x, so one pooling of the mean weights.
        mean_weights = weights_sum / len(self.temperatures)  # [B, C, L]
        features = x.mean(-1)[:, None] + self.lam * torch.einsum("bcl,bdl->bcd", mean_weights, x)  # [B, C, D]
        out = {"logits": logits, "features": features}
        out.update(self.project(features))  # the proj_* outputs (contrastive only)
        if return_attn:
            out["attn"] = first.reshape(b, self.num_classes, h, w)
        return out

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, temperatures={self.temperatures}, lam={self.lam}"
