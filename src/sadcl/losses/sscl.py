"""Sample-to-sample supervised contrastive loss (SSCL) over label-level features (docs/spec.md §2.2).

Only *activated* label-level features take part: the positive (sample, class) pairs of the batch view and of the
memory-bank view. We gather those ``2K`` rows (``K = sum(y)``) first and build only a ``2K x 2K`` similarity matrix, so
the cost is ``O((2K)^2 D)`` instead of the official ``(2BC)^2`` matrix (for COCO at B=32: 186^2 instead of 5120^2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SSCLoss", "official_anchor_fraction"]

Variant = Literal["paper", "official"]
AnchorScale = Literal["official", "none"]


def official_anchor_fraction(labels: Tensor, views: int = 2) -> Tensor:
    """The share of activated anchor rows that the official loss actually averages over (its misaligned mask).

    Sample row ``a`` (view-major, ``a in [0, V*B)``) of class ``c`` is activated when ``y[a mod B, c] = 1``; the
    official row mask is ``y[floor(a/2), c]``. Only rows with both set add to the official sum, which is divided by all
    ``V*K`` activated rows. This returns ``|{(a, c): y[a mod B, c] = y[floor(a/2), c] = 1}| / (V*K)``, 1 for an
    empty batch.

    Args:
        labels: ``[B, C]`` multi-hot labels.
        views: V, the number of stacked views (2: batch and memory bank).

    Returns:
        A float32 scalar in ``[0, 1]``.
    """
    pos = labels > 0  # [B, C]
    rows = torch.arange(views * pos.shape[0], device=pos.device)
    own = pos[rows % pos.shape[0]]  # [V*B, C]: the labels of the row's own sample
    mask = pos[torch.div(rows, 2, rounding_mode="floor").clamp(max=pos.shape[0] - 1)]  # official lambda
    total = own.sum()
    if total == 0:
        return torch.ones((), device=pos.device)
    return (own & mask).sum().float() / total.float()


class SSCLoss(nn.Module):
    r"""Multi-label supervised contrastive loss between label-level features of two views.

    Inputs are ``features [B, V=2, C, D]`` (view 0: projected batch features, view 1: projected memory-bank rows
    paired with the batch rows) and ``labels [B, C]``. Rows are stacked view-major: sample row ``a = v*B + i``
    (``a`` in ``[0, 2B)``) and feature ``z_{a,c} = normalize(features[i, v, c])``; a bank row carries the labels of the
    batch row it is paired with, so each positive ``(i, c)`` always has its own bank row as a positive.

    ``variant='paper'`` (the poster / SupCon formula, done right)::

        I      = {(a, c) : y[a mod B, c] = 1}                     # activated features, 2K of them
        A(r)   = I \ {r}                                          # every other activated feature, any class
        P(r)   = {s in A(r) : class(s) = class(r)}                # same class
        l_r    = -(tau/tau_b) / |P(r)| * sum_{p in P(r)} [ z_r.z_p/tau - logsumexp_{s in A(r)} z_r.z_s/tau ]
        L      = sum_{r in I} l_r / |I|                           # mean over anchors; 0 if I is empty

    ``variant='official'`` reproduces the official ``MultiSupConLoss`` values and gradients, quirks included:

    1. **Misaligned anchor mask.** The rows kept in the mean are ``lambda_r = y[floor(a/2), c]`` instead of
       ``y[a mod B, c]`` (the official labels are flattened sample-major while the features are view-major). A row
       with ``y[a mod B, c] = 1`` but ``lambda_r = 0`` is dropped; a row with ``lambda_r = 1`` but no label adds 0
       yet still counts in the divisor ``sum(lambda) = 2K``. Both agree only when ``B = 1``.
    2. **Shifts that do not cancel.** The numerator uses ``S_c[a,b] - M1[a,b]`` with ``M1[a,b]`` the max over classes
       of the masked per-class similarities (masked entries count as 0); the denominator uses
       ``log(sum_s exp(S[r,s] - M2[r]) + 1e-5)`` with ``M2[r]`` the max over the masked row (again 0 for masked
       entries). Both maxima are detached, so the gradients are those of the unshifted loss (apart from the
       ``+1e-5``), but the value carries ``M2[r] - M1[a,b]`` offsets.
    3. ``den <= 0 -> 1`` and ``sum(lambda) = 0 -> L = 0`` exactly.

    Both variants compute only over the activated features; the rows with ``y = 0`` are only counted (official).

    **Strength** (``anchor_scale``, paper variant only). Quirk 1 makes the official loss weak: only the rows whose
    sample ``floor(a/2)`` also has class ``c`` add to the sum, yet it is divided by all ``2K`` rows. On MOM-30
    batches of 32 that keeps 13 % of the rows, on a COCO-like label matrix 20 % (:func:`official_anchor_fraction`,
    measured by ``benchmarks/anchor_fraction.py``, in BENCHMARKS.md). So at one weight the paper loss, which
    averages over every anchor, puts 5-8x the official gradient on the shared trunk, while the official
    ``weight_sscl = 100`` was tuned for the weak loss. With ``anchor_scale='official'`` (the default of
    ``loss.sscl_anchor_scale`` in the run configuration) the paper loss is multiplied by the batch's kept fraction
    ``rho`` (a constant of the labels, no gradient): ``rho * mean_r l_r`` is the official divisor applied to the
    number of rows the official loss keeps, every anchor taking part equally, so ``weight_sscl`` means the same
    strength in both variants (equal gradients when the two masks agree, see the tests). ``'none'`` (this class's
    default: the formula above as written) is the plain mean over anchors.

    Args:
        temperature: ``tau`` dividing the cosine similarities.
        base_temperature: ``tau_b``; the loss is scaled by ``tau / tau_b`` (1 with the official values).
        variant: ``'paper'`` or ``'official'``.
        anchor_scale: ``'none'`` or ``'official'``, see above; ignored by the official variant.

    Labels are treated as binary: a (sample, class) is activated when its label is > 0.
    """

    def __init__(
        self,
        *,
        temperature: float = 0.2,
        base_temperature: float = 0.2,
        variant: Variant = "paper",
        anchor_scale: AnchorScale = "none",
    ) -> None:
        super().__init__()
        if variant not in ("paper", "official"):
            raise ValueError(f"variant must be 'paper' or 'official', got {variant!r}")
        if anchor_scale not in ("official", "none"):
            raise ValueError(f"anchor_scale must be 'official' or 'none', got {anchor_scale!r}")
        self.anchor_scale = anchor_scale
        if temperature <= 0 or base_temperature <= 0:
            raise ValueError("temperature and base_temperature must be > 0")
        self.temperature = temperature
        self.base_temperature = base_temperature
        self.variant = variant

    def forward(self, features: Tensor | Sequence[Tensor], labels: Tensor, ignore: Tensor | None = None) -> Tensor:
        """Compute the loss.

        Args:
            features: ``[B, V, C, D]`` label-level features of V=2 views (not necessarily normalised), or the V views
                as a sequence of ``[B, C, D]`` tensors (same result, without materialising the stacked copy and its
                full-size gradient: ``Criterion`` passes the views this way).
            labels: ``[B, C]`` multi-hot labels of the batch rows (float32 or float64).
            ignore: Optional bool ``[B, C]``: unknown labels. An unknown ``(i, c)`` is not activated, so it is neither
                an anchor, a positive nor a negative (its features take no part, in either view); for the official
                variant it is also dropped from the misaligned row mask. Whatever ``labels`` holds there does not
                matter, and without a True entry the result is unchanged (bit-exact).

        Returns:
            Scalar loss in the promoted dtype of ``features`` and ``labels`` (official: float64 with COCO labels).
            A batch without any positive gives exactly 0 (still attached to the graph, zero gradient).
        """
        if isinstance(features, Tensor) and features.dim() != 4:
            raise ValueError(f"features must be [B, V, C, D], got {list(features.shape)}")
        views_list = list(features.unbind(1)) if isinstance(features, Tensor) else list(features)
        if not views_list or any(t.dim() != 3 or t.shape != views_list[0].shape for t in views_list):
            shapes = [list(t.shape) for t in views_list]
            raise ValueError(f"each view must be [B, C, D] with the same shape, got {shapes}")
        v = len(views_list)
        b, c, _ = views_list[0].shape
        if tuple(labels.shape) != (b, c):
            raise ValueError(f"labels must be [B, C] = [{b}, {c}], got {list(labels.shape)}")
        if v != 2 if self.variant == "official" else v < 2:
            raise ValueError(
                f"the {self.variant} variant needs {'V=2' if self.variant == 'official' else 'V>=2'} views, got V={v}"
            )
        device = views_list[0].device
        labels = labels.to(device) if labels.is_floating_point() else labels.to(views_list[0])  # bool/int labels
        if ignore is not None:
            if tuple(ignore.shape) != (b, c):
                raise ValueError(f"ignore must be [B, C] = [{b}, {c}], got {list(ignore.shape)}")
            labels = labels.masked_fill(ignore.to(device, torch.bool), 0)  # unknown = not activated
        out_dtype = torch.promote_types(views_list[0].dtype, labels.dtype)

        # Activated features, view-major: all V views of positive k, sample row a = v*B + i.
        sample, cls = (labels > 0).nonzero(as_tuple=True)  # [K], [K], row-major (sorted by sample then class)
        num_pos = sample.numel()
        views = torch.arange(v, device=device).repeat_interleave(num_pos)  # [V*K]
        sample_v, cls_v = sample.repeat(v), cls.repeat(v)  # [V*K]
        z = F.normalize(torch.cat([t[sample, cls] for t in views_list]), dim=-1)  # [V*K, D]
        if num_pos == 0:
            # Nothing to contrast: 0, but connected to the inputs so that backward gives zero gradients.
            return z.sum().to(out_dtype) * 0

        # Similarities in the features' dtype, then everything else in the promoted dtype (as official, where the
        # float64 label masks promote the products).
        sim = (z @ z.T / self.temperature).to(out_dtype)  # [V*K, V*K]
        n = sim.shape[0]
        eye = torch.eye(n, dtype=torch.bool, device=sim.device)
        same_class = (cls_v[:, None] == cls_v[None, :]) & ~eye  # [V*K, V*K]: P(r)
        num_pos_pairs = same_class.sum(1).to(out_dtype)  # |P(r)| >= 1: the same positive in another view
        scale = self.temperature / self.base_temperature

        if self.variant == "paper":
            lse = torch.logsumexp(sim.masked_fill(eye, float("-inf")), dim=1)  # [V*K]
            mean_pos = torch.where(same_class, sim, 0).sum(1) / num_pos_pairs  # [V*K]
            if self.anchor_scale == "official":
                scale = scale * official_anchor_fraction(labels, views=v).to(out_dtype)
            return -scale * (mean_pos - lse).sum() / n

        # ---- official ----
        row = views * b + sample_v  # sample row a of each feature, [2K]
        with torch.no_grad():
            shift_num = self._class_max_shift(sim, same_class, row, num_rows=v * b, num_classes=c)  # M1, [2K, 2K]
            # M2[r]: max over the masked row where masked entries (at least the diagonal) count as 0.
            shift_den = sim.masked_fill(eye, 0).amax(1).clamp(min=0)  # [2K]
        # Mask before exp: the diagonal (1/tau - M2) may overflow for a small tau, and 0 * inf would poison backward.
        den = torch.exp((sim - shift_den[:, None]).masked_fill(eye, float("-inf"))).sum(1)  # [2K], > 0
        log_den = torch.log(den + 1e-5)
        numer = torch.where(same_class, sim - shift_num, 0).sum(1)  # sum_p (S - M1)
        mean_log_prob = (numer - num_pos_pairs * log_den) / num_pos_pairs  # [2K]
        # Misaligned official row mask: lambda = y[floor(a/2), c]; rows with y = 0 add 0 but count in the divisor.
        keep = labels[torch.div(row, 2, rounding_mode="floor"), cls_v] > 0  # [2K]
        divisor = 2 * num_pos  # sum(lambda) = 2 sum(y) for binary labels
        return -scale * torch.where(keep, mean_log_prob, 0).sum() / divisor

    @staticmethod
    def _class_max_shift(sim: Tensor, same_class: Tensor, row: Tensor, *, num_rows: int, num_classes: int) -> Tensor:
        """The official numerator shift ``M1[a, b] = max_c P_c[a, b] * S_c[a, b]`` for every activated pair.

        Masked classes contribute 0 to the max, and a pair of sample rows (a, b) has a masked class unless both are
        positive for all C classes, so ``M1 = max(0, max over shared classes)`` except in that case.

        Args:
            sim: ``[n, n]`` similarities of the activated features.
            same_class: ``[n, n]`` bool, same class and not the same feature.
            row: ``[n]`` sample row ``a`` (in ``[0, 2B)``) of each feature.
            num_rows: ``2B``.
            num_classes: C.

        Returns:
            ``[n, n]``: ``M1[row[r], row[s]]`` (meaningful where ``same_class``).
        """
        pair = row[:, None] * num_rows + row[None, :]  # [n, n] id of the sample-row pair (a, b)
        pair_sel, sim_sel = pair[same_class], sim[same_class]  # one entry per (a, b, shared class c)
        best = torch.full((num_rows * num_rows,), float("-inf"), dtype=sim.dtype, device=sim.device)
        best = best.scatter_reduce(0, pair_sel, sim_sel, reduce="amax")
        shared = torch.zeros(num_rows * num_rows, dtype=torch.long, device=sim.device)
        shared = shared.scatter_add(0, pair_sel, torch.ones_like(pair_sel))
        best = torch.where(shared < num_classes, best.clamp(min=0), best)
        return best[pair]
