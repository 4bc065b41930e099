"""SADCL: Query2Label-style label-query transformer with the contrastive extras of SADCL (docs/spec.md §1).

``contrastive=False`` builds the stage-1 baseline (Query2Label): backbone, transformer, label queries, classifier.
``contrastive=True`` adds the projection head, the learnable category prototypes and the memory bank.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from sadcl.models.head import GroupWiseLinear, ProjectionHead
from sadcl.models.memory_bank import MemoryBank
from sadcl.models.position_encoding import PositionEmbeddingSine
from sadcl.models.transformer import Transformer

__all__ = ["CONTRASTIVE_PREFIXES", "SADCL"]

_logger = logging.getLogger(__name__)

CONTRASTIVE_PREFIXES = ("proj_head.", "prototypes", "memory_bank.")
"""State-dict keys that exist only with ``contrastive=True`` (absent from a stage-1 checkpoint)."""


def _is_contrastive_key(key: str) -> bool:
    return key.startswith(CONTRASTIVE_PREFIXES)


class SADCL(nn.Module):
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
    ) -> None:
        super().__init__()
        if hidden_dim % 2:
            raise ValueError(f"hidden_dim must be even (half the channels encode y, half x), got {hidden_dim}")
        self.num_classes = num_classes
        self.hidden_dim = hidden_dim
        self.contrastive = contrastive
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
        if contrastive:
            self.proj_head = ProjectionHead(hidden_dim, hidden_dim, proj_dim)
            # Learnable (and weight-decayed) as official; random until load_prototypes().
            self.prototypes = nn.Parameter(torch.randn(num_classes, hidden_dim))
            self.memory_bank = MemoryBank(bank_slots, num_classes, hidden_dim, threshold=bank_threshold)
            self.memory_bank.fill(self.prototypes.detach())

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
        if self.contrastive:
            c, s = self.num_classes, self.memory_bank.bank_slots
            # One pass through the shared head (as official, which concatenates features and bank); the bank is a
            # buffer, so its rows only pass gradient into the head's weights.
            z = torch.cat(
                [
                    hs.reshape(b * c, -1),
                    self.memory_bank.bank.to(hs.dtype).reshape(s * c, -1),
                    self.prototypes.to(hs.dtype),
                ]
            )
            z = self.proj_head(z)  # [(B + S + 1) * C, p]
            out["proj_features"] = z[: b * c].reshape(b, c, -1)
            out["proj_bank"] = z[b * c : (b + s) * c].reshape(s, c, -1)
            out["proj_prototypes"] = z[(b + s) * c :]
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

    @torch.no_grad()
    def update_memory_bank(
        self, features: Tensor, targets: Tensor, logits: Tensor, ignore: Tensor | None = None
    ) -> Tensor:
        """Official bank update (docs/spec.md §1.8): write ``features[b, c]`` to slot ``b % S`` where the label is a
        known positive and ``sigmoid(logit) > bank_threshold``.

        Args:
            features: ``out["features"]`` ``[B, C, d]`` (detached here).
            targets: ``[B, C]``.
            logits: ``out["logits"]`` ``[B, C]``.
            ignore: Optional bool ``[B, C]`` of unknown labels (never written).

        Returns:
            The written mask ``[B, C]`` (bool).
        """
        if not self.contrastive:
            raise RuntimeError("update_memory_bank needs a contrastive model (contrastive=True)")
        return self.memory_bank.update(features, targets, logits, ignore)

    @torch.no_grad()
    def load_prototypes(self, prototypes: Tensor | np.ndarray | str | Path) -> None:
        """Set the category prototypes and fill every memory-bank slot with them.

        Args:
            prototypes: ``[C, d]`` (or ``[1, C, d]``) as a tensor/array or a ``.npy``/``.pt`` file.

        Raises:
            RuntimeError: When the model is not contrastive.
            FileNotFoundError: When the file does not exist.
            ValueError: On a wrong shape, non-finite values or an unreadable file (the message names the source).
        """
        if not self.contrastive:
            raise RuntimeError("load_prototypes needs a contrastive model (contrastive=True)")
        source = "prototypes"
        if isinstance(prototypes, (str, Path)):
            source = str(prototypes)
            prototypes = _read_prototypes(Path(prototypes))
        tensor = torch.as_tensor(prototypes)
        expected = (self.num_classes, self.hidden_dim)
        if tensor.dim() == 3 and tensor.shape[0] == 1:
            tensor = tensor[0]
        if tuple(tensor.shape) != expected:
            raise ValueError(
                f"{source}: prototypes must have shape [num_classes, hidden_dim] = "
                f"[{expected[0]}, {expected[1]}], got {list(tensor.shape)}"
            )
        if not tensor.is_floating_point() or not torch.isfinite(tensor).all():
            raise ValueError(f"{source}: prototypes must be finite floating-point values")
        self.prototypes.copy_(tensor.to(self.prototypes))
        self.memory_bank.fill(self.prototypes)
        _logger.info("loaded prototypes %s from %s; memory bank filled", list(tensor.shape), source)

    def load_baseline_state_dict(self, state_dict: Mapping[str, Tensor] | str | Path) -> list[str]:
        """Load stage-1 (baseline) weights: strict on every key except the contrastive-only ones.

        Args:
            state_dict: A state dict, or a checkpoint file (``weights_only`` loading; a ``{"model": ...}`` dict is
                unwrapped).

        Returns:
            The skipped keys: this model's contrastive keys absent from ``state_dict`` (kept at their current values)
            and contrastive keys of ``state_dict`` this model lacks.

        Raises:
            RuntimeError: When any other key is missing or unexpected, or a shape does not match.
        """
        if isinstance(state_dict, (str, Path)):
            obj = torch.load(state_dict, map_location="cpu", weights_only=True)
            state_dict = obj["model"] if isinstance(obj, dict) and isinstance(obj.get("model"), Mapping) else obj
        own = set(self.state_dict())
        ignored = sorted(k for k in state_dict if k not in own and _is_contrastive_key(k))
        filtered = {k: v for k, v in state_dict.items() if k not in ignored}
        missing, unexpected = self.load_state_dict(filtered, strict=False)
        bad_missing = [k for k in missing if not _is_contrastive_key(k)]
        if bad_missing or unexpected:
            raise RuntimeError(
                f"baseline weights do not fit this model: missing {bad_missing[:10]}, "
                f"unexpected {list(unexpected)[:10]}"
            )
        skipped = sorted(missing) + ignored
        _logger.info("loaded baseline weights; skipped %d contrastive-only keys: %s", len(skipped), skipped)
        return skipped


def _read_prototypes(path: Path) -> Tensor:
    if not path.is_file():
        raise FileNotFoundError(f"prototypes file not found: {path}")
    try:
        if path.suffix == ".npy":
            return torch.from_numpy(np.load(path, allow_pickle=False))
        if path.suffix in (".pt", ".pth"):
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, dict) and "prototypes" in obj:
                obj = obj["prototypes"]
            if not isinstance(obj, Tensor):
                raise ValueError(f"expected a tensor or {{'prototypes': tensor}}, got {type(obj).__name__}")
            return obj
    except (OSError, ValueError, RuntimeError) as e:  # unreadable / pickled / wrong content
        raise ValueError(f"{path}: cannot read prototypes: {e}") from e
    raise ValueError(f"{path}: prototypes must be a .npy or .pt file")
