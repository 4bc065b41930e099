"""SADCL: Query2Label-style label-query transformer with the contrastive extras of SADCL (docs/spec.md §1).

``contrastive=False`` builds the stage-1 baseline (Query2Label): backbone, transformer, label queries, classifier.
``contrastive=True`` adds the projection head, the learnable category prototypes and the memory bank
(:class:`~sadcl.models.contrastive.ContrastiveModel`, shared with the CSRA and ML-Decoder heads).
"""

from __future__ import annotations

from torch import Tensor, nn

from sadcl.models.contrastive import CONTRASTIVE_PREFIXES, ContrastiveModel
from sadcl.models.head import GroupWiseLinear
from sadcl.models.position_encoding import PositionEmbeddingSine
from sadcl.models.transformer import Transformer

__all__ = ["CONTRASTIVE_PREFIXES", "SADCL"]


class SADCL(ContrastiveModel):
    """Multi-label classifier with one learned query per label.

    Args:
        backbone: Feature extractor with ``num_channels`` and ``stride`` attributes (usually :class:`Backbone`).
        num_classes: Number of labels C.
        hidden_dim: Transformer width d (even; official 2048).
        nhead: Attention heads.
        enc_layers: Encoder layers (official 1).
        dec_layers: Decoder layers (official 2).
        dim_feedforward: FFN hidden size (official 8192).
        dropout: Transformer dropout (official 0.1).
        pre_norm: Pre-norm transformer (official False: post-norm).
        contrastive: Add the projection head, prototypes and memory bank (stage 2).
        proj_dim: Projection size p (official 1024).
        bank_slots: Memory-bank slots S (official: the per-GPU batch size); batch row b pairs with slot ``b % S``.
        bank_threshold: Confidence a positive needs to be written to the bank (strict ``>``).
        prototype_momentum: None: learned prototypes (official); m in [0, 1): they follow the model
            (:meth:`~sadcl.models.contrastive.ContrastiveModel.update_prototypes`).

    ``update_memory_bank``, ``load_prototypes`` and ``load_baseline_state_dict`` come from
    :class:`~sadcl.models.contrastive.ContrastiveModel` (``feature_dim`` = ``hidden_dim``).
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        num_classes: int,
        hidden_dim: int = 2048,
        nhead: int = 4,
        enc_layers: int = 1,
        dec_layers: int = 2,
        dim_feedforward: int = 8192,
        dropout: float = 0.1,
        pre_norm: bool = False,
        contrastive: bool = True,
        proj_dim: int = 1024,
        bank_slots: int = 32,
        bank_threshold: float = 0.8,
        prototype_momentum: float | None = None,
    ) -> None:
        super().__init__()
        if hidden_dim % 2:
            raise ValueError(f"hidden_dim must be even (half the channels encode y, half x), got {hidden_dim}")
        self.num_classes = num_classes
        self.hidden_dim = hidden_dim
        self.backbone = backbone
        channels = int(backbone.num_channels)
        # Official: a 1x1 conv is built but replaced by Identity because the ResNet-101 width equals hidden_dim.
        self.input_proj: nn.Module = (
            nn.Identity() if channels == hidden_dim else nn.Conv2d(channels, hidden_dim, kernel_size=1)
        )
        self.position_encoding = PositionEmbeddingSine(num_pos_feats=hidden_dim // 2)
        self.transformer = Transformer(
            d_model=hidden_dim,
            nhead=nhead,
            enc_layers=enc_layers,
            dec_layers=dec_layers,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            pre_norm=pre_norm,
        )
        self.query_embed = nn.Embedding(num_classes, hidden_dim)  # N(0, 1) init, as official
        self.fc = GroupWiseLinear(num_classes, hidden_dim, bias=True)
        self.init_contrastive(
            feature_dim=hidden_dim,
            contrastive=contrastive,
            proj_dim=proj_dim,
            bank_slots=bank_slots,
            bank_threshold=bank_threshold,
            prototype_momentum=prototype_momentum,
        )

    def forward_features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Backbone + input projection + positional encoding.

        Args:
            images: ``[B, 3, H, W]``.

        Returns:
            ``feat [B, d, h, w]`` and ``pos [B, d, h, w]`` (in ``feat``'s dtype) with ``h, w = H, W / stride``.
        """
        feat = self.input_proj(self.backbone(images))
        return feat, self.position_encoding(feat)

    def forward_head(self, feat: Tensor, pos: Tensor, return_attn: bool = False) -> dict[str, Tensor]:
        """Transformer, classifier and (contrastive) projections. See :meth:`forward` for the outputs."""
        b, _, h, w = feat.shape
        hs, attn = self.transformer(feat, self.query_embed.weight, pos, return_attn=return_attn)  # [B, C, d]
        out = {"logits": self.fc(hs), "features": hs}
        out.update(self.project(hs))  # the proj_* outputs (contrastive only)
        if return_attn:
            out["attn"] = attn.reshape(b, self.num_classes, h, w)
        return out

    def forward(self, images: Tensor, return_attn: bool = False) -> dict[str, Tensor]:
        """Classify a batch.

        Args:
            images: ``[B, 3, H, W]``, any B; H and W divisible by the backbone stride.
            return_attn: Add the last decoder layer's cross-attention.

        Returns:
            ``logits [B, C]``; ``features [B, C, d]`` (label-level features after the final decoder LayerNorm);
            with ``contrastive``: ``proj_features [B, C, p]``, ``proj_bank [S, C, p]``, ``proj_prototypes [C, p]``;
            with ``return_attn``: ``attn [B, C, h, w]`` averaged over heads (each map sums to 1 in eval mode;
            in train mode it includes attention dropout).
        """
        feat, pos = self.forward_features(images)
        return self.forward_head(feat, pos, return_attn=return_attn)
