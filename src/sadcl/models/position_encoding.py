"""Sine positional encoding, the official "v2" variant, computed for the actual feature-map size (docs/spec.md §1.3)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["PositionEmbeddingSine"]


class PositionEmbeddingSine(nn.Module):
    """2-D sine/cosine encoding of the feature-map grid (DETR / Query2Label "v2").

    Row index i (from 0) of an ``h x w`` map is normalised to ``(i + 1) / (h + eps) * scale`` (columns alike); channel
    ``k`` of each half uses frequency ``temperature ** (2 * (k // 2) / num_pos_feats)``, sin on even and cos on odd
    channels. The first ``num_pos_feats`` channels encode y, the rest x.

    Unlike the official module (a fixed ``[1, 2F, 14, 14]`` state-dict buffer), the encoding is computed for whatever
    ``h, w`` the input has and cached per (size, device, dtype) outside the state_dict, so checkpoints do not depend on
    the training image size.

    Args:
        num_pos_feats: Channels per axis F; the output has ``2F`` channels (official: hidden_dim / 2).
        temperature: Frequency base.
        normalize: Normalise the positions to ``(0, scale]`` (official: True).
        scale: Range of the normalised positions.
        eps: Added to the size in the normalisation, as official.
    """

    def __init__(
        self,
        *,
        num_pos_feats: int,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float = 2 * math.pi,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale
        self.eps = eps
        self._cache: dict[tuple[int, int, torch.device, torch.dtype], Tensor] = {}

    def encoding(
        self, h: int, w: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> Tensor:
        """The encoding of an ``h x w`` grid, ``[1, 2F, h, w]`` (cached)."""
        device = torch.device(device)
        key = (h, w, device, dtype)
        pe = self._cache.get(key)
        if pe is None:
            if len(self._cache) >= 64:  # bound memory when many sizes are seen (multi-scale inference)
                self._cache.clear()
            pe = self._compute(h, w, device).to(dtype)
            self._cache[key] = pe
        return pe

    def _compute(self, h: int, w: int, device: torch.device) -> Tensor:
        # float32 arithmetic in the official order, so the values match its float32 buffer.
        y = torch.arange(1, h + 1, dtype=torch.float32, device=device)  # cumsum of a ones-mask = index + 1
        x = torch.arange(1, w + 1, dtype=torch.float32, device=device)
        if self.normalize:
            y = y / (h + self.eps) * self.scale
            x = x / (w + self.eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)  # [F]
        pos_y = y[:, None] / dim_t  # [h, F]
        pos_x = x[:, None] / dim_t  # [w, F]
        # Interleave (sin, cos) pairs that share a frequency: channel k is sin if k is even, cos if odd.
        pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)  # [h, F]
        pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)  # [w, F]
        pe_y = pos_y.t()[:, :, None].expand(-1, h, w)  # [F, h, w]
        pe_x = pos_x.t()[:, None, :].expand(-1, h, w)  # [F, h, w]
        return torch.cat((pe_y, pe_x), dim=0)[None].contiguous()  # [1, 2F, h, w]

    def forward(self, x: Tensor) -> Tensor:
        """Encode the grid of ``x``.

        Args:
            x: Any tensor ``[B, *, h, w]`` (only its batch size, spatial size, device and dtype are used).

        Returns:
            ``[B, 2F, h, w]`` in ``x``'s dtype (float32 for integer inputs); a broadcast view over the batch, so
            don't write to it.
        """
        dtype = x.dtype if x.is_floating_point() else torch.float32
        pe = self.encoding(x.shape[-2], x.shape[-1], x.device, dtype)
        return pe.expand(x.shape[0], -1, -1, -1)

    def extra_repr(self) -> str:
        return (
            f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}, normalize={self.normalize}, "
            f"scale={self.scale:.6g}"
        )
