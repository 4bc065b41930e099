"""SADCL's stage-2 extras on any head with label-level features (docs/spec.md §1.5-§1.8): projection head, learnable
category prototypes and memory bank, the ``proj_*`` outputs SSCL and PSCL read, and the weight and prototype loading
between the two stages.

A head gets them by subclassing :class:`ContrastiveModel` and calling :meth:`~ContrastiveModel.init_contrastive` at
the end of its ``__init__`` and :meth:`~ContrastiveModel.project` on its features ``[B, C, D]`` in ``forward``. The
attribute names (``proj_head``, ``prototypes``, ``memory_bank``) are the state-dict keys of every SADCL checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from sadcl.distributed import all_reduce_sum
from sadcl.models.head import ProjectionHead
from sadcl.models.memory_bank import MemoryBank

__all__ = ["CONTRASTIVE_PREFIXES", "ContrastiveModel", "is_contrastive_key"]

_logger = logging.getLogger(__name__)

CONTRASTIVE_PREFIXES = ("proj_head.", "prototypes", "memory_bank.")
"""State-dict keys that exist only with ``contrastive=True`` (absent from a stage-1 checkpoint)."""


def is_contrastive_key(key: str) -> bool:
    """Whether a state-dict key belongs to the contrastive extras (:data:`CONTRASTIVE_PREFIXES`)."""
    return key.startswith(CONTRASTIVE_PREFIXES)


class ContrastiveModel(nn.Module):
    """Base of the models whose head outputs label-level features ``features [B, C, D]`` (one vector per class).

    Attributes (set by :meth:`init_contrastive`):
        num_classes: Labels C (set by the subclass before :meth:`init_contrastive`).
        feature_dim: D, the size of a label-level feature (and of a prototype, a bank row, the projection input).
        contrastive: Whether the extras exist (stage 2).
        proj_head: :class:`ProjectionHead` ``D -> D -> p`` (contrastive only).
        prototypes: ``nn.Parameter [C, D]``, learnable and weight-decayed as official; random until
            :meth:`load_prototypes` (contrastive only). With a ``prototype_momentum`` they follow the model's
            features instead (:meth:`update_prototypes`; no gradient).
        prototype_momentum: None (learned prototypes) or the momentum of :meth:`update_prototypes`.
        memory_bank: :class:`MemoryBank` ``[S, C, D]``, filled with the prototypes (contrastive only).
    """

    num_classes: int
    feature_dim: int
    contrastive: bool
    prototype_momentum: float | None = None

    def init_contrastive(
        self,
        *,
        feature_dim: int,
        contrastive: bool,
        proj_dim: int,
        bank_slots: int,
        bank_threshold: float,
        prototype_momentum: float | None = None,
    ) -> None:
        """Set ``feature_dim`` and ``contrastive`` and, when contrastive, build the projection head, the prototypes and
        the memory bank (in that order: the random draws, hence the initial weights, are SADCL's).

        Args:
            feature_dim: D.
            contrastive: Build the extras.
            proj_dim: Projection size p (official 1024).
            bank_slots: Memory-bank slots S (official: the per-GPU batch size); batch row b pairs with slot ``b % S``.
            bank_threshold: Confidence a positive needs to be written to the bank (strict ``>``).
            prototype_momentum: None: the prototypes are learned (official). m in [0, 1): they follow the model
                (:meth:`update_prototypes` after each step) and take no gradient, so the optimizer (which keeps only
                parameters that need one) leaves them alone.
        """
        if prototype_momentum is not None and not 0.0 <= prototype_momentum < 1.0:
            raise ValueError(f"prototype_momentum must be in [0, 1) or None, got {prototype_momentum}")
        self.feature_dim = feature_dim
        self.contrastive = contrastive
        self.prototype_momentum = float(prototype_momentum) if contrastive and prototype_momentum is not None else None
        if contrastive:
            self.proj_head = ProjectionHead(feature_dim, feature_dim, proj_dim)
            learned = self.prototype_momentum is None
            self.prototypes = nn.Parameter(torch.randn(self.num_classes, feature_dim), requires_grad=learned)
            self.memory_bank = MemoryBank(bank_slots, self.num_classes, feature_dim, threshold=bank_threshold)
            self.memory_bank.fill(self.prototypes.detach())

    def project(self, features: Tensor) -> dict[str, Tensor]:
        """The projections SSCL and PSCL read (an empty dict when not contrastive).

        Args:
            features: ``[B, C, D]``, the head's label-level features.

        Returns:
            ``proj_features [B, C, p]``, ``proj_bank [S, C, p]`` and ``proj_prototypes [C, p]``.
        """
        if not self.contrastive:
            return {}
        b = features.shape[0]
        c, s = self.num_classes, self.memory_bank.bank_slots
        # One pass through the shared head (as official, which concatenates features and bank); the bank is a
        # buffer, so its rows only pass gradient into the head's weights.
        z = torch.cat(
            [
                features.reshape(b * c, -1),
                self.memory_bank.bank.to(features.dtype).reshape(s * c, -1),
                self.prototypes.to(features.dtype),
            ]
        )
        z = self.proj_head(z)  # [(B + S + 1) * C, p]
        return {
            "proj_features": z[: b * c].reshape(b, c, -1),
            "proj_bank": z[b * c : (b + s) * c].reshape(s, c, -1),
            "proj_prototypes": z[(b + s) * c :],
        }

    @torch.no_grad()
    def update_memory_bank(
        self, features: Tensor, targets: Tensor, logits: Tensor, ignore: Tensor | None = None
    ) -> Tensor:
        """Official bank update (docs/spec.md §1.8): write ``features[b, c]`` to slot ``b % S`` where the label is a
        known positive and ``sigmoid(logit) > bank_threshold``.

        Args:
            features: ``out["features"]`` ``[B, C, D]`` (detached here).
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
    def update_prototypes(self, features: Tensor, taken: Tensor) -> Tensor:
        """``p_c <- m p_c + (1 - m) mean_{b: taken[b, c]} features[b, c]`` for every class with a taken feature (on
        every rank alike: the sums and counts are summed over ranks); a no-op when the prototypes are learned
        (``prototype_momentum`` None). Called after the optimizer step (also after one that AMP's scaler skipped, as the
        memory bank is written then too).

        Args:
            features: ``out["features"]`` ``[B, C, D]`` (detached here).
            taken: Bool ``[B, C]``: the features that count (the memory bank's written mask,
                :meth:`update_memory_bank`).

        Returns:
            The number of features that entered each class's mean ``[C]`` (over every rank).
        """
        if self.prototype_momentum is None:
            return torch.zeros(self.num_classes, device=features.device)
        weights = taken.to(features.device, torch.float32)  # [B, C]
        sums = torch.einsum("bc,bcd->cd", weights, features.detach().float())  # [C, D]
        counts = weights.sum(0)  # [C]
        reduced = all_reduce_sum(torch.cat([sums, counts[:, None]], dim=1))  # one collective
        sums, counts = reduced[:, :-1], reduced[:, -1]
        seen = counts > 0
        mean = sums / counts.clamp(min=1)[:, None]
        m = self.prototype_momentum
        old = self.prototypes.float()
        self.prototypes.copy_(torch.where(seen[:, None], m * old + (1 - m) * mean, old).to(self.prototypes.dtype))
        return counts

    @torch.no_grad()
    def load_prototypes(self, prototypes: Tensor | np.ndarray | str | Path) -> None:
        """Set the category prototypes and fill every memory-bank slot with them.

        Args:
            prototypes: ``[C, D]`` (or ``[1, C, D]``) as a tensor/array or a ``.npy``/``.pt`` file.

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
        expected = (self.num_classes, self.feature_dim)
        if tensor.dim() == 3 and tensor.shape[0] == 1:
            tensor = tensor[0]
        if tuple(tensor.shape) != expected:
            raise ValueError(
                f"{source}: prototypes must have shape [num_classes, feature size] = "
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
        ignored = sorted(k for k in state_dict if k not in own and is_contrastive_key(k))
        filtered = {k: v for k, v in state_dict.items() if k not in ignored}
        missing, unexpected = self.load_state_dict(filtered, strict=False)
        bad_missing = [k for k in missing if not is_contrastive_key(k)]
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
