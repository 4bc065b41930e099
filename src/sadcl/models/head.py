"""Per-label classifier and the contrastive projection head (docs/spec.md §1.5, §1.6)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["GroupWiseLinear", "ProjectionHead"]


class GroupWiseLinear(nn.Module):
    """One linear classifier per label: ``logits[b, c] = <W[c], x[b, c]> + b[c]``.

    Args:
        num_classes: Number of labels C.
        hidden_dim: Feature size d of each label embedding.
        bias: Whether to add a per-label bias.

    Shapes: ``[B, C, d] -> [B, C]``. Parameters ``W [1, C, d]`` and ``b [1, C]`` (official names).
    """

    def __init__(self, num_classes: int, hidden_dim: int, bias: bool = True) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.hidden_dim = hidden_dim
        self.W = nn.Parameter(torch.empty(1, num_classes, hidden_dim))
        self.b = nn.Parameter(torch.empty(1, num_classes)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise every entry U(-1/sqrt(d), 1/sqrt(d)), as the official code."""
        bound = 1.0 / math.sqrt(self.hidden_dim)
        nn.init.uniform_(self.W, -bound, bound)
        if self.b is not None:
            nn.init.uniform_(self.b, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """Apply each label's classifier.

        Args:
            x: Label embeddings ``[B, C, d]``.

        Returns:
            Logits ``[B, C]``.
        """
        out = (self.W * x).sum(-1)  # [B, C]
        if self.b is not None:
            out = out + self.b
        return out

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, hidden_dim={self.hidden_dim}, bias={self.b is not None}"


class ProjectionHead(nn.Module):
    """Two-layer MLP ``in -> hidden -> out`` with a ReLU between (no norm, no dropout), shared by features,
    memory bank and prototypes.

    Args:
        in_dim: Input size (the transformer width d).
        hidden_dim: Hidden size (official: d).
        out_dim: Projection size p (official: 1024).

    Shapes: ``[..., in_dim] -> [..., out_dim]``. State-dict names ``layers.0.*`` and ``layers.1.*``.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(in_dim, hidden_dim), nn.Linear(hidden_dim, out_dim)])

    def forward(self, x: Tensor) -> Tensor:
        """Project ``x [..., in_dim]`` to ``[..., out_dim]``."""
        x = torch.relu(self.layers[0](x))
        return self.layers[1](x)
