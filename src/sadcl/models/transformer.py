"""DETR-style transformer, Query2Label variant: encoder over the feature map, decoder of label queries with
cross-attention only (docs/spec.md §1.4).

Sub-module names follow DETR/Query2Label (``self_attn``, ``multihead_attn``, ``linear1/2``, ``norm1/2/3``;
the decoder layer has no ``norm1`` because it has no self-attention; ``encoder.layers``, ``decoder.layers``,
``decoder.norm``), so official transformer weights map one to one.
Tensors are batch-first: ``[B, L, d]``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["Transformer", "TransformerDecoderLayer", "TransformerEncoderLayer"]


def _with_pos(x: Tensor, pos: Tensor | None) -> Tensor:
    return x if pos is None else x + pos


class TransformerEncoderLayer(nn.Module):
    """Self-attention + FFN, post-norm by default (``pre_norm`` gives pre-norm).

    Args:
        d_model: Width d.
        nhead: Attention heads.
        dim_feedforward: FFN hidden size.
        dropout: Dropout on attention probabilities, inside the FFN and on both residual branches.
        pre_norm: Pre-norm instead of the official post-norm.
    """

    def __init__(
        self, d_model: int, nhead: int, dim_feedforward: int, dropout: float = 0.1, pre_norm: bool = False
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def _ffn(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(torch.relu(self.linear1(x))))

    def forward(self, src: Tensor, pos: Tensor | None = None) -> Tensor:
        """``src, pos [B, L, d] -> [B, L, d]``; queries and keys get ``pos``, values don't."""
        if self.pre_norm:
            x = self.norm1(src)
            q = k = _with_pos(x, pos)
            src = src + self.dropout1(self.self_attn(q, k, x, need_weights=False)[0])
            return src + self.dropout2(self._ffn(self.norm2(src)))
        q = k = _with_pos(src, pos)
        src = self.norm1(src + self.dropout1(self.self_attn(q, k, src, need_weights=False)[0]))
        return self.norm2(src + self.dropout2(self._ffn(src)))


class TransformerDecoderLayer(nn.Module):
    """Label-query decoder layer **without self-attention**: cross-attention to the encoder memory + FFN.

    Args:
        d_model: Width d.
        nhead: Attention heads.
        dim_feedforward: FFN hidden size.
        dropout: Dropout on attention probabilities, inside the FFN and on both residual branches.
        pre_norm: Pre-norm instead of the official post-norm.
    """

    def __init__(
        self, d_model: int, nhead: int, dim_feedforward: int, dropout: float = 0.1, pre_norm: bool = False
    ) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def _ffn(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(torch.relu(self.linear1(x))))

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        pos: Tensor | None = None,
        query_pos: Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """One decoder step.

        Args:
            tgt: Label embeddings ``[B, C, d]``.
            memory: Encoder output ``[B, L, d]``.
            pos: Positional encoding of the memory ``[B, L, d]`` (added to the keys).
            query_pos: Label queries ``[B, C, d]`` (added to the attention queries).
            need_weights: Also return the cross-attention weights averaged over heads.

        Returns:
            ``tgt [B, C, d]`` and the weights ``[B, C, L]`` (after attention dropout, so rows sum to 1 in eval) or None.
        """
        x = self.norm2(tgt) if self.pre_norm else tgt
        attn, weights = self.multihead_attn(
            _with_pos(x, query_pos),
            _with_pos(memory, pos),
            memory,
            need_weights=need_weights,
            average_attn_weights=True,
        )
        if self.pre_norm:
            tgt = tgt + self.dropout2(attn)
            return tgt + self.dropout3(self._ffn(self.norm3(tgt))), weights
        tgt = self.norm2(tgt + self.dropout2(attn))
        return self.norm3(tgt + self.dropout3(self._ffn(tgt))), weights


class _LayerStack(nn.Module):
    """A container ``layers`` + optional final ``norm`` (state-dict names as DETR); the loop lives in Transformer."""

    def __init__(self, layers: list[nn.Module], norm: nn.Module | None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm


class Transformer(nn.Module):
    """Encoder over the flattened feature map, then label-query decoder and a final LayerNorm.

    Args:
        d_model: Width d (= the feature channels after ``input_proj``).
        nhead: Attention heads (d must be divisible by it).
        enc_layers: Encoder layers (0 allowed: the memory is then the feature map itself).
        dec_layers: Decoder layers (>= 1).
        dim_feedforward: FFN hidden size.
        dropout: Dropout everywhere (attention probabilities, FFN, residual branches).
        pre_norm: Pre-norm layers; the encoder then gets a final LayerNorm (as DETR). The decoder always
            has one.

    Every parameter with more than one dimension is initialised with ``xavier_uniform_`` (MHA ``in_proj_weight`` as one
    ``[3d, d]`` matrix), as official.
    """

    def __init__(
        self,
        *,
        d_model: int,
        nhead: int,
        enc_layers: int,
        dec_layers: int,
        dim_feedforward: int,
        dropout: float = 0.1,
        pre_norm: bool = False,
    ) -> None:
        super().__init__()
        if dec_layers < 1:
            raise ValueError(f"dec_layers must be >= 1, got {dec_layers}")
        if d_model % nhead:
            raise ValueError(f"d_model={d_model} must be divisible by nhead={nhead}")
        self.d_model = d_model
        self.nhead = nhead
        self.encoder = _LayerStack(
            [TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, pre_norm) for _ in range(enc_layers)],
            nn.LayerNorm(d_model) if pre_norm and enc_layers > 0 else None,
        )
        self.decoder = _LayerStack(
            [TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout, pre_norm) for _ in range(dec_layers)],
            nn.LayerNorm(d_model),
        )
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(
        self, src: Tensor, query_embed: Tensor, pos: Tensor, return_attn: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Decode one embedding per label.

        Args:
            src: Feature map ``[B, d, h, w]``.
            query_embed: Label queries ``[C, d]``.
            pos: Positional encoding ``[B, d, h, w]`` (or ``[1, d, h, w]``).
            return_attn: Also return the last decoder layer's cross-attention averaged over heads.

        Returns:
            ``hs [B, C, d]`` (after the final decoder LayerNorm) and ``attn [B, C, h*w]`` or None.
        """
        b = src.shape[0]
        memory = src.flatten(2).transpose(1, 2)  # [B, h*w, d]
        pos = pos.flatten(2).transpose(1, 2).to(memory.dtype).expand(b, -1, -1)  # [B, h*w, d]
        for layer in self.encoder.layers:
            memory = layer(memory, pos)
        if self.encoder.norm is not None:
            memory = self.encoder.norm(memory)
        query_pos = query_embed[None].to(memory.dtype).expand(b, -1, -1)  # [B, C, d]
        tgt = torch.zeros_like(query_pos)  # official: decoding starts from zeros; the first query is query_pos alone
        attn = None
        last = len(self.decoder.layers) - 1
        for i, layer in enumerate(self.decoder.layers):
            tgt, weights = layer(tgt, memory, pos, query_pos, need_weights=return_attn and i == last)
            if weights is not None:
                attn = weights
        return self.decoder.norm(tgt), attn
