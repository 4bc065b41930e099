"""Dense reference implementations of the official SSCL and PSCL, written from docs/spec.md §2.2 and §2.3.

They build the official ``[C, 2B, 2B]`` and ``(2BC) x (2BC)`` matrices, quirks included, so they are slow and memory
hungry: the reference that tests check ``sadcl.losses`` against where the golden data has no case, and the "official"
side of ``benchmarks/bench_losses.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def dense_official_sscl(
    features: Tensor, labels: Tensor, temperature: float = 0.2, base_temperature: float = 0.2
) -> Tensor:
    """The official SSCL algorithm with its dense ``(2BC)^2`` matrices (docs/spec.md §2.2, quirks included).

    Args:
        features: ``[B, 2, C, D]``.
        labels: ``[B, C]`` (float64 for COCO).

    Returns:
        Scalar loss.
    """
    b, v, c, d = features.shape
    z = F.normalize(features, dim=-1)
    z = z.transpose(0, 1).reshape(v * b, c, d)  # view-major sample rows a = v*B + i
    y_rows = labels.repeat(v, 1)  # [2B, C]: y[a mod B, c]
    n = v * b
    # Per-class similarities and positive masks, [C, 2B, 2B].
    zc = z.transpose(0, 1)  # [C, 2B, D]
    sim_c = torch.matmul(zc, zc.transpose(1, 2)) / temperature
    off_diag = 1 - torch.eye(n, dtype=labels.dtype)
    pos_c = y_rows.T[:, :, None] * y_rows.T[:, None, :] * off_diag  # [C, 2B, 2B]
    masked_c = pos_c * sim_c
    shift_num = masked_c.max(dim=0).values.detach()  # M1 [2B, 2B]: max over classes, masked entries = 0
    num = masked_c - shift_num
    # All label-level features against all, [R, R] with R = 2BC, rows r = a*C + c.
    flat = z.reshape(n * c, d)
    sim = torch.matmul(flat, flat.T) / temperature
    y_flat = y_rows.reshape(-1)
    anchor = y_flat[:, None] * y_flat[None, :] * (1 - torch.eye(n * c, dtype=labels.dtype))
    masked = anchor * sim
    shift_den = masked.max(dim=1, keepdim=True).values.detach()  # M2 [R, 1]
    den = (anchor * torch.exp(masked - shift_den)).sum(1)
    den = torch.where(den <= 0, torch.ones_like(den), den)
    row_mask = labels.repeat_interleave(v, dim=0).reshape(-1)  # the misaligned y[floor(a/2), c]
    log_den = (row_mask * torch.log(den + 1e-5)).reshape(n, c).T  # [C, 2B]
    mean_log_prob = (pos_c * (num - log_den[:, :, None])).sum(2) / pos_c.sum(2).clamp(min=1)  # [C, 2B]
    per_row = -(temperature / base_temperature) * mean_log_prob.T.reshape(-1)  # [R]
    if row_mask.sum() == 0:
        return (per_row * 0).sum()
    return (row_mask * per_row).sum() / row_mask.sum()


def dense_official_pscl(features: Tensor, prototypes: Tensor, labels: Tensor, temperature: float = 0.07) -> Tensor:
    """The official PSCL (docs/spec.md §2.3); already linear in B*C*D, written as the official code computes it."""
    sim = F.cosine_similarity(features, prototypes.reshape(1, *features.shape[1:]), dim=-1, eps=1e-8) / temperature
    sim = sim - sim.max(dim=0, keepdim=True).values.detach()
    num = (labels * torch.exp(labels * sim)).sum(0)
    num = torch.where(num <= 0, torch.ones_like(num), num)
    den = torch.exp(sim).sum(0)
    return -(torch.log(num) - torch.log(den)).sum() / labels.sum()
