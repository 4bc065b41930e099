"""DETR-style transformer, Query2Label variant: encoder over the feature map, decoder of label queries with
cross-attention only (docs/spec.md §1.4).

Sub-module names follow DETR/Query2Label (``self_attn``, ``multihead_attn``, ``linear1/2``, ``norm1/2/3``;
the decoder layer has no ``norm1`` because it has no self-attention; ``encoder.layers``, ``decoder.layers``,
``decoder.norm``), so official transformer weights map one to one.
Tensors are batch-first: ``[B, L, d]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["Transformer", "TransformerDecoderLayer", "TransformerEncoderLayer"]


def _with_pos(x: Tensor, pos: Tensor | None) -> Tensor:
    return x if pos is None else x + pos


class _AttentionFFNLayer(nn.Module):
    """One attention sub-layer then one FFN sub-layer, each with dropout on its residual branch and a LayerNorm:
    post-norm (official) or pre-norm. The one residual rule of both layer kinds below.

    ``names`` = (attention, its norm, the FFN's norm, the attention's residual dropout, the FFN's): the DETR module
    names, which differ between encoder and decoder layers (official weights must map one to one).

    Args:
        d_model: Width d.
        nhead: Attention heads.
        dim_feedforward: FFN hidden size.
        dropout: Dropout on attention probabilities, inside the FFN and on both residual branches.
        pre_norm: Pre-norm instead of the official post-norm.
        names: The module names above.
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int,
        dropout: float,
        pre_norm: bool,
        *,
        names: tuple[str, str, str, str, str],
    ) -> None:
        super().__init__()
        attn, norm_attn, norm_ffn, drop_attn, drop_ffn = names
        setattr(self, attn, nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True))
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        for name in (norm_attn, norm_ffn):
            setattr(self, name, nn.LayerNorm(d_model))
        for name in (drop_attn, drop_ffn):
            setattr(self, name, nn.Dropout(dropout))
        self.pre_norm = pre_norm
        self._names = names

    def _ffn(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(torch.relu(self.linear1(x))))

    def _sublayers(
        self, x: Tensor, attend: Callable[[Tensor], tuple[Tensor, Tensor | None]]
    ) -> tuple[Tensor, Tensor | None]:
        """``x [B, L, d]`` through ``attend`` (given the normed input in pre-norm, else ``x``) and the FFN."""
        _, norm_attn, norm_ffn, drop_attn, drop_ffn = (getattr(self, n) for n in self._names)
        if self.pre_norm:
            out, weights = attend(norm_attn(x))
            x = x + drop_attn(out)
            return x + drop_ffn(self._ffn(norm_ffn(x))), weights
        out, weights = attend(x)
        x = norm_attn(x + drop_attn(out))
        return norm_ffn(x + drop_ffn(self._ffn(x))), weights


class TransformerEncoderLayer(_AttentionFFNLayer):
    """Self-attention + FFN, post-norm by default (``pre_norm`` gives pre-norm); arguments as the decoder layer's."""

    def __init__(
        self, d_model: int, nhead: int, dim_feedforward: int, dropout: float = 0.1, pre_norm: bool = False
    ) -> None:
        names = ("self_attn", "norm1", "norm2", "dropout1", "dropout2")
        super().__init__(d_model, nhead, dim_feedforward, dropout, pre_norm, names=names)

    def forward(self, src: Tensor, pos: Tensor | None = None) -> Tensor:
        """``src, pos [B, L, d] -> [B, L, d]``; queries and keys get ``pos``, values don't."""

        def attend(x: Tensor) -> tuple[Tensor, None]:
            q = k = _with_pos(x, pos)
            return self.self_attn(q, k, x, need_weights=False)[0], None

        return self._sublayers(src, attend)[0]


class TransformerDecoderLayer(_AttentionFFNLayer):
    """Label-query decoder layer **without self-attention**: cross-attention to the encoder memory + FFN.

    Args: ``d_model`` (width d), ``nhead``, ``dim_feedforward`` (FFN hidden size), ``dropout`` (on attention
    probabilities, inside the FFN and on both residual branches), ``pre_norm`` (instead of the official post-norm).

    It has no ``norm1``/``dropout1``: those belong to the self-attention official decoder layers have elsewhere.
    """

    def __init__(
        self, d_model: int, nhead: int, dim_feedforward: int, dropout: float = 0.1, pre_norm: bool = False
    ) -> None:
        names = ("multihead_attn", "norm2", "norm3", "dropout2", "dropout3")
        super().__init__(d_model, nhead, dim_feedforward, dropout, pre_norm, names=names)

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

        def attend(x: Tensor) -> tuple[Tensor, Tensor | None]:
            return self.multihead_attn(
                _with_pos(x, query_pos),
                _with_pos(memory, pos),
                memory,
                need_weights=need_weights,
                average_attn_weights=True,
            )

        return self._sublayers(tgt, attend)


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
