"""Per-slot memory bank of label-level features with the official hard-overwrite update (docs/spec.md §1.7, §1.8)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["MemoryBank"]


class MemoryBank(nn.Module):
    """A bank of ``bank_slots`` label-level feature sets, ``bank [S, C, d]``.

    ``bank`` is a buffer (not a parameter): it is in the state_dict, so it is checkpointed and averaged by the EMA
    model like the official ``memorybank`` (an ``nn.Parameter`` with ``requires_grad=False``), but no optimizer sees it.

    Slot semantics follow the official code: batch row ``b`` pairs with slot ``b % S`` (the official code requires
    ``B == S``). When ``B > S`` several rows share a slot and they are applied in batch order, so the **later row wins**
    for each (slot, class) it writes.

    Args:
        bank_slots: Number of slots S (official: the per-GPU batch size).
        num_classes: Number of labels C.
        dim: Feature size d.
        threshold: A positive (b, c) is written only when ``sigmoid(logit) > threshold`` (strict).
    """

    bank: Tensor

    def __init__(self, bank_slots: int, num_classes: int, dim: int, threshold: float = 0.8) -> None:
        super().__init__()
        if bank_slots < 1:
            raise ValueError(f"bank_slots must be >= 1, got {bank_slots}")
        self.bank_slots = bank_slots
        self.num_classes = num_classes
        self.dim = dim
        self.threshold = threshold
        self.register_buffer("bank", torch.zeros(bank_slots, num_classes, dim))

    @torch.no_grad()
    def fill(self, prototypes: Tensor) -> None:
        """Set every slot to the category prototypes.

        Args:
            prototypes: ``[C, d]`` (or ``[1, C, d]``).
        """
        if prototypes.dim() == 3 and prototypes.shape[0] == 1:
            prototypes = prototypes[0]
        if tuple(prototypes.shape) != (self.num_classes, self.dim):
            raise ValueError(
                f"prototypes must have shape [{self.num_classes}, {self.dim}], got {list(prototypes.shape)}"
            )
        self.bank.copy_(prototypes.detach().to(self.bank)[None].expand_as(self.bank))

    @torch.no_grad()
    def update(self, embedding: Tensor, targets: Tensor, logits: Tensor, ignore: Tensor | None = None) -> Tensor:
        """Overwrite ``bank[b % S, c] <- embedding[b, c]`` where ``targets[b, c] != 0``, the label is known and
        ``sigmoid(logits[b, c]) > threshold``.

        The sigmoid and the comparison run in the logits' dtype, as official: in float32, ``sigmoid(log 4)`` equals
        float32(0.8) and is not written.

        Args:
            embedding: Label-level features ``[B, C, d]`` (detached here; cast to the bank's dtype).
            targets: ``[B, C]``; any non-zero value counts as positive (official ``nonzero()``).
            logits: ``[B, C]``.
            ignore: Optional bool ``[B, C]``: unknown labels, never written (whatever ``targets`` holds there).

        Returns:
            Bool mask ``[B, C]`` of the (row, class) pairs that were written (a write may later be overwritten by a
            later row sharing the slot when ``B > S``).
        """
        b, c, d = embedding.shape
        if (c, d) != (self.num_classes, self.dim):
            raise ValueError(f"embedding must be [B, {self.num_classes}, {self.dim}], got {list(embedding.shape)}")
        if tuple(targets.shape) != (b, c) or tuple(logits.shape) != (b, c):
            raise ValueError(
                f"targets and logits must be [{b}, {c}], got {list(targets.shape)} and {list(logits.shape)}"
            )
        mask = (targets != 0) & (torch.sigmoid(logits) > self.threshold)  # [B, C]
        if ignore is not None:
            if tuple(ignore.shape) != (b, c):
                raise ValueError(f"ignore must be [{b}, {c}], got {list(ignore.shape)}")
            mask = mask & ~ignore.to(mask.device, torch.bool)
        embedding = embedding.detach().to(self.bank.dtype)
        # Chunks of S rows in batch order: within a chunk the slots are distinct, later chunks overwrite earlier ones.
        for start in range(0, b, self.bank_slots):
            m = mask[start : start + self.bank_slots]  # [n, C], n <= S
            n = m.shape[0]
            bank = self.bank[:n]
            bank[m] = embedding[start : start + n][m]
        return mask

    def extra_repr(self) -> str:
        return (
            f"bank_slots={self.bank_slots}, num_classes={self.num_classes}, dim={self.dim}, threshold={self.threshold}"
        )
