"""ML-Decoder (Ridnik et al., WACV 2023, "ML-Decoder: Scalable and Versatile Classification Head"):
``model.head: ml_decoder``.

The backbone's map is projected to width d (1x1, then ReLU, as the official head; no positional encoding), G group
queries attend to it through a transformer decoder **without self-attention** (cross-attention + FFN: the decoder
layer of :mod:`sadcl.models.transformer`, post-norm), then the "group fully connected" layer maps each group's
output to ``k = ceil(C / G)`` logits with that group's own ``[d, k]`` matrix; the first C of the ``G * k`` are the
classes' logits (class c belongs to group ``c // k``), plus one bias per class. G = C is "full decoding": one query
per class, and the decoder outputs are label-level features ``[B, C, d]`` (class c's logit is its own classifier
column applied to its own output, plus its bias), so SADCL's contrastive extras apply
(:class:`~sadcl.models.contrastive.ContrastiveModel`); with G < C a group's output serves several classes and there
are none.

Differences from the official head: the queries are learnable (the paper finds fixed ones as good and freezes them);
the official layer's ``norm1(tgt + dropout(tgt))``, left where self-attention was removed, is not applied (it only
rescales the queries); depth, width, heads, FFN size and dropout are arguments (official: 1 layer, 768, 8, 2048,
0.1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sadcl.models.contrastive import ContrastiveModel
from sadcl.models.transformer import TransformerDecoderLayer

__all__ = ["GroupFC", "MLDecoderClassifier"]


class GroupFC(nn.Module):
    """Group fully connected: group g's output ``h[:, g] [d]`` gives ``k`` logits through its own ``weight[g] [d, k]``.

    Args:
        num_groups: Groups G (<= C).
        hidden_dim: Width d of each group's output.
        num_classes: Labels C; ``k = ceil(C / G)`` logits per group, the first C of ``G * k`` kept.

    Shapes: ``[B, G, d] -> [B, C]``. Parameters ``weight [G, d, k]`` (Xavier-normal, as official) and ``bias [C]``
    (zeros): ``G * d * k + C`` values.
    """

    def __init__(self, num_groups: int, hidden_dim: int, num_classes: int) -> None:
        super().__init__()
        if not 1 <= num_groups <= num_classes:
            raise ValueError(f"num_groups must be in [1, num_classes={num_classes}], got {num_groups}")
        self.num_classes = num_classes
        self.per_group = math.ceil(num_classes / num_groups)
        self.weight = nn.Parameter(torch.empty(num_groups, hidden_dim, self.per_group))
        self.bias = nn.Parameter(torch.zeros(num_classes))
        nn.init.xavier_normal_(self.weight)

    def group_of_class(self) -> Tensor:
        """Each class's group index ``[C]`` (class c is logit ``c % k`` of group ``c // k``)."""
        return torch.arange(self.num_classes, device=self.bias.device) // self.per_group

    def forward(self, h: Tensor) -> Tensor:
        """``h [B, G, d] -> logits [B, C]``."""
        out = torch.einsum("bgd,gdk->bgk", h, self.weight.to(h.dtype))  # [B, G, k]
        return out.flatten(1)[:, : self.num_classes] + self.bias.to(h.dtype)

    def extra_repr(self) -> str:
        g, d, k = self.weight.shape
        return f"num_groups={g}, hidden_dim={d}, per_group={k}, num_classes={self.num_classes}"


class MLDecoderClassifier(ContrastiveModel):
    """Backbone -> 1x1 projection + ReLU -> group-query decoder without self-attention -> group FC.

    Args:
        backbone: Feature extractor with ``num_channels`` and ``stride`` attributes (usually
            :class:`~sadcl.models.backbone.Backbone`).
        num_classes: Number of labels C.
        num_groups: Group queries G (1..C); None = C (full decoding). The paper uses 100 for many classes.
        hidden_dim: Decoder width d (divisible by ``nhead``).
        nhead: Attention heads.
        dec_layers: Decoder layers (>= 1).
        dim_feedforward: FFN hidden size.
        dropout: Dropout on attention probabilities, inside the FFN and on both residual branches.
        contrastive: Add SADCL's projection head, prototypes and memory bank on the decoder outputs (stage 2;
            ``feature_dim`` = d); full decoding only.
        proj_dim: Projection size p.
        bank_slots: Memory-bank slots S.
        bank_threshold: Confidence a positive needs to be written to the bank (strict ``>``).
        prototype_momentum: None: learned prototypes (official); m in [0, 1): they follow the model
            (:meth:`~sadcl.models.contrastive.ContrastiveModel.update_prototypes`).

    Attributes:
        input_proj: ``Conv2d(D, d, 1)``; ``query_embed``: ``nn.Embedding(G, d)``; ``layers``: the decoder layers;
        group_fc: :class:`GroupFC`.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        num_classes: int,
        num_groups: int | None = None,
        hidden_dim: int = 768,
        nhead: int = 8,
        dec_layers: int = 1,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        contrastive: bool = False,
        proj_dim: int = 1024,
        bank_slots: int = 32,
        bank_threshold: float = 0.8,
        prototype_momentum: float | None = None,
    ) -> None:
        super().__init__()
        num_groups = num_classes if num_groups is None else num_groups
        if dec_layers < 1:
            raise ValueError(f"dec_layers must be >= 1, got {dec_layers}")
        if hidden_dim % nhead:
            raise ValueError(f"hidden_dim={hidden_dim} must be divisible by nhead={nhead}")
        if contrastive and num_groups != num_classes:
            raise ValueError(
                f"contrastive=True needs full decoding (num_groups == num_classes = {num_classes}, got {num_groups}): "
                "group queries shared by several classes give no per-class features"
            )
        self.num_classes = num_classes
        self.num_groups = num_groups
        self.backbone = backbone
        self.input_proj = nn.Conv2d(int(backbone.num_channels), hidden_dim, kernel_size=1)
        self.query_embed = nn.Embedding(num_groups, hidden_dim)  # N(0, 1) init, as official
        self.layers = nn.ModuleList(
            TransformerDecoderLayer(hidden_dim, nhead, dim_feedforward, dropout, pre_norm=False)
            for _ in range(dec_layers)
        )
        self.group_fc = GroupFC(num_groups, hidden_dim, num_classes)
        self.init_contrastive(
            feature_dim=hidden_dim,
            contrastive=contrastive,
            proj_dim=proj_dim,
            bank_slots=bank_slots,
            bank_threshold=bank_threshold,
            prototype_momentum=prototype_momentum,
        )

    def forward(self, images: Tensor, return_attn: bool = False) -> dict[str, Tensor]:
        """Classify a batch.

        Args:
            images: ``[B, 3, H, W]``.
            return_attn: Add the last decoder layer's cross-attention.

        Returns:
            ``logits [B, C]``; with full decoding (G = C) ``features [B, C, d]``, the decoder outputs; with
            ``contrastive``: ``proj_features [B, C, p]``, ``proj_bank [S, C, p]``, ``proj_prototypes [C, p]``; with
            ``return_attn``: ``attn [B, C, h, w]`` averaged over heads, each class getting its group's map (each sums
            to 1 in eval mode; in train mode it includes attention dropout).
        """
        feat = torch.relu(self.input_proj(self.backbone(images)))  # [B, d, h, w]
        b, _, h, w = feat.shape
        memory = feat.flatten(2).transpose(1, 2)  # [B, h*w, d]
        tgt = self.query_embed.weight[None].to(memory.dtype).expand(b, -1, -1)  # [B, G, d]
        attn = None
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            tgt, weights = layer(tgt, memory, need_weights=return_attn and i == last)  # [B, G, d], [B, G, h*w]
            attn = weights if weights is not None else attn
        out = {"logits": self.group_fc(tgt)}
        if self.num_groups == self.num_classes:
            out["features"] = tgt
            out.update(self.project(tgt))  # the proj_* outputs (contrastive only)
        if return_attn and attn is not None:
            attn = attn[:, self.group_fc.group_of_class()]  # [B, C, h*w]
            out["attn"] = attn.reshape(b, self.num_classes, h, w)
        return out
