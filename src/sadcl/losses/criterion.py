"""The training criterion: named unweighted loss terms, and the one place their weights apply (docs/spec.md §3.3)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from sadcl import distributed as D

from .asymmetric import AsymmetricLoss
from .pscl import PSCLoss
from .sscl import SSCLoss

__all__ = ["UNKNOWN_MODES", "Criterion"]

UNKNOWN_MODES = ("ignore", "negative")
"""How the criterion treats labels marked unknown: left out of every term, or counted as negatives."""


class Criterion(nn.Module):
    """ASL on the logits, plus the SSCL and PSCL terms when their losses are given.

    ``forward`` returns the **unweighted** terms by name; ``total`` applies ``weight_dict`` (the only place the weights
    are used, so logging can show both raw and weighted values).

    Data flow (docs/spec.md §1.9, §3.3): SSCL gets ``stack([proj_features, bank_view], dim=1)`` where the bank view
    pairs batch row ``b`` with bank slot ``b % S`` (the official code requires ``B == S``, where this is ``proj_bank``
    itself); PSCL gets ``(proj_features, proj_prototypes, targets)``.

    Args:
        asl: The classification loss on ``outputs['logits']``.
        sscl: Sample-to-sample contrastive loss, or None to leave the term out.
        pscl: Prototype-to-sample contrastive loss, or None to leave the term out.
        weight_dict: The weight of every term (official: ``asl`` 1, ``sscl`` 100, ``pscl`` 50; the defaults live in
            ``sadcl.config.LossConfig``).
        gather_features: Under DDP, compute SSCL/PSCL over the global batch: the per-sample contrastive inputs of
            every rank are all-gathered first (see :meth:`global_contrastive_terms`); ASL stays per rank. A no-op in
            a single process.
        unknown_mode: ``'ignore'``: an unknown label (``ignore`` True) takes no part in ASL, SSCL or PSCL;
            ``'negative'``: it counts as a negative (value 0) in every term, the mask is dropped. In both modes the
            value the targets hold at an unknown entry is never read.
        sscl_min_confidence: SSCL activates a positive only when ``sigmoid(logit) > sscl_min_confidence`` (the
            logit detached; the model's ``logits`` output); None: every positive (paper, official).
        contrastive_warmup: Share of training (``progress`` in :meth:`weights`) over which the ``sscl`` and
            ``pscl`` weights rise linearly from 0 to ``weight_dict``'s; 0: full weights throughout (official).
    """

    def __init__(
        self,
        *,
        asl: AsymmetricLoss | nn.Module,
        sscl: SSCLoss | nn.Module | None = None,
        pscl: PSCLoss | nn.Module | None = None,
        weight_dict: Mapping[str, float],
        unknown_mode: str = "ignore",
        gather_features: bool = False,
        sscl_min_confidence: float | None = None,
        contrastive_warmup: float = 0.0,
    ) -> None:
        super().__init__()
        if unknown_mode not in UNKNOWN_MODES:
            raise ValueError(f"unknown_mode must be one of {UNKNOWN_MODES}, got {unknown_mode!r}")
        self.unknown_mode = unknown_mode
        self.asl = asl
        self.sscl = sscl
        self.pscl = pscl
        self.weight_dict: dict[str, float] = dict(weight_dict)
        self.gather_features = gather_features
        self.sscl_min_confidence = sscl_min_confidence
        self.contrastive_warmup = contrastive_warmup

    @property
    def contrastive(self) -> bool:
        """Whether any contrastive term is computed (the model must then return the ``proj_*`` outputs)."""
        return self.sscl is not None or self.pscl is not None

    def forward(
        self, outputs: Mapping[str, Tensor], targets: Tensor, ignore: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Compute the unweighted terms.

        Args:
            outputs: Model outputs: ``logits [B, C]``; for the contrastive terms also ``proj_features [B, C, p]``,
                ``proj_bank [S, C, p]`` (SSCL) and ``proj_prototypes [C, p]`` or ``[1, C, p]`` (PSCL).
            targets: ``[B, C]`` multi-hot labels (float32, or float64 as the official COCO labels).
            ignore: Optional bool ``[B, C]``: unknown labels (partial labels, VOC difficult), handled as
                ``unknown_mode`` says.

        Returns:
            ``{'asl': t}`` plus ``'sscl'`` / ``'pscl'`` when those losses are set; each a scalar tensor.
        """
        targets, ignore = self.resolve_unknown(targets, ignore)
        terms = {"asl": self.asl(outputs["logits"], targets, ignore)}
        if self.contrastive:
            if self.gather_features and D.get_world_size() > 1:
                terms.update(self.global_contrastive_terms(outputs, targets, ignore))
            else:
                terms.update(self.contrastive_terms(outputs, targets, ignore))
        return terms

    def resolve_unknown(self, targets: Tensor, ignore: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """``(targets [B, C], ignore [B, C] | None)`` as the terms see them: unknown entries set to 0, and the mask
        kept (``'ignore'``) or dropped (``'negative'``). Idempotent."""
        if ignore is None:
            return targets, None
        ignore = ignore.to(targets.device, torch.bool)
        targets = targets.masked_fill(ignore, 0)
        return targets, (ignore if self.unknown_mode == "ignore" else None)

    def global_contrastive_terms(
        self, outputs: Mapping[str, Tensor], targets: Tensor, ignore: Tensor | None = None
    ) -> dict[str, Tensor]:
        """The contrastive terms over the features of every DDP rank (``gather_features``).

        The other ranks' features are constants here, so each rank back-propagates only through its own part of the
        global loss; DDP then averages the gradients over G ranks, i.e. divides the global loss's gradient by G, which
        the factor G on the terms undoes. The memory banks of all ranks are gathered too (row ``r*B + b`` pairs with
        the bank slot of its own rank); the prototypes are the same on every rank and are not gathered.

        Args:
            outputs: As :meth:`contrastive_terms`, per rank (``proj_features [B, C, p]``, ``proj_bank [S, C, p]``).
            targets: ``[B, C]`` this rank's labels.
            ignore: Optional bool ``[B, C]`` of this rank's unknown labels (see ``unknown_mode``).

        Returns:
            ``'sscl'`` / ``'pscl'`` scalar tensors, each G times the loss of the gathered batch.
        """
        targets, ignore = self.resolve_unknown(targets, ignore)
        feats = outputs["proj_features"]
        # Everything that has one row per sample travels together, in one (rank) order: a new per-sample tensor is
        # one more entry here.
        per_sample: dict[str, Tensor] = {"proj_features": feats}
        if "proj_bank" in outputs:
            per_sample["proj_bank"] = self._paired_bank(outputs["proj_bank"], feats.shape[0])
        per_sample["targets"] = targets
        if self.sscl_min_confidence is not None:
            per_sample["logits"] = outputs["logits"].detach()
        if ignore is not None:
            per_sample["ignore"] = ignore.to(torch.uint8)  # not every backend moves bool
        gathered = {k: D.all_gather_with_grad(v) for k, v in per_sample.items()}
        global_targets = gathered.pop("targets")
        global_ignore = gathered.pop("ignore").bool() if "ignore" in gathered else None
        if "proj_prototypes" in outputs:
            gathered["proj_prototypes"] = outputs["proj_prototypes"]
        world_size = D.get_world_size()
        global_terms = self.contrastive_terms(gathered, global_targets, global_ignore)
        return {k: v * world_size for k, v in global_terms.items()}

    @staticmethod
    def _paired_bank(bank: Tensor, batch: int) -> Tensor:
        """``[B, C, p]``: the slot of ``bank [S, C, p]`` each batch row pairs with (row b <-> slot ``b % S``)."""
        if bank.shape[0] == batch:  # B == S in training: slot b is row b
            return bank
        return bank[torch.arange(batch, device=bank.device) % bank.shape[0]]

    def contrastive_terms(
        self, outputs: Mapping[str, Tensor], targets: Tensor, ignore: Tensor | None = None
    ) -> dict[str, Tensor]:
        """The unweighted ``sscl`` / ``pscl`` terms alone (e.g. on features gathered from every DDP rank).

        Args:
            outputs: ``proj_features [B, C, p]``, ``proj_bank [S, C, p]`` (SSCL), ``proj_prototypes [C, p]`` (PSCL);
                ``logits [B, C]`` with ``sscl_min_confidence``.
            targets: ``[B, C]`` multi-hot labels.
            ignore: Optional bool ``[B, C]`` of unknown labels (see ``unknown_mode``).

        Returns:
            ``'sscl'`` / ``'pscl'`` scalar tensors for the losses that are set (empty for the baseline).
        """
        terms: dict[str, Tensor] = {}
        if not self.contrastive:
            return terms
        targets, ignore = self.resolve_unknown(targets, ignore)
        missing = [
            k
            for k, need in (
                ("proj_features", True),
                ("proj_bank", self.sscl is not None),
                ("proj_prototypes", self.pscl is not None),
            )
            if need and k not in outputs
        ]
        if missing:
            raise KeyError(
                f"the contrastive terms need model outputs {missing}; build the model with "
                "contrastive=True or the criterion with contrastive=False"
            )
        feats = outputs["proj_features"]  # [B, C, p]
        if self.sscl is not None:
            bank = self._paired_bank(outputs["proj_bank"], feats.shape[0])  # [S, C, p] -> [B, C, p]
            # The two views as a list: the same loss as stack([feats, bank], 1) without the [B, 2, C, p] copy.
            # A bank row carries the labels (and the unknowns) of the batch row it is paired with.
            terms["sscl"] = self.sscl([feats, bank], self._sscl_targets(outputs, targets), ignore)
        if self.pscl is not None:
            terms["pscl"] = self.pscl(feats, outputs["proj_prototypes"], targets, ignore)
        return terms

    def _sscl_targets(self, outputs: Mapping[str, Tensor], targets: Tensor) -> Tensor:
        """``targets [B, C]`` as SSCL activates them: with ``sscl_min_confidence``, a positive the model is not yet
        confident about is left out (for noisy labels: the contrastive pull then follows labels the classifier
        agrees with)."""
        if self.sscl_min_confidence is None:
            return targets
        if "logits" not in outputs:
            raise KeyError("sscl_min_confidence needs the model output 'logits' beside the contrastive features")
        confident = torch.sigmoid(outputs["logits"].detach().float()) > self.sscl_min_confidence
        return targets * confident.to(targets.dtype)

    def weights(self, progress: float | None = None) -> dict[str, float]:
        """The weight of every term at ``progress`` (the share of training done, in [0, 1]; None: the end), i.e.
        ``weight_dict`` with the contrastive weights scaled by ``min(1, progress / contrastive_warmup)``."""
        if not self.contrastive_warmup or progress is None or progress >= self.contrastive_warmup:
            return dict(self.weight_dict)
        scale = max(progress, 0.0) / self.contrastive_warmup
        return {k: w * scale if k in ("sscl", "pscl") else w for k, w in self.weight_dict.items()}

    def total(self, terms: Mapping[str, Tensor], progress: float | None = None) -> Tensor:
        """The weighted sum ``sum_k weights(progress)[k] * terms[k]`` (terms in their given order).

        Args:
            terms: The output of ``forward``.
            progress: Share of training done, for ``contrastive_warmup`` (None: full weights).

        Returns:
            Scalar total loss.
        """
        weight_dict = self.weights(progress)
        unknown = [k for k in terms if k not in weight_dict]
        if unknown:
            raise KeyError(f"no weight for terms {unknown}; weight_dict has {sorted(self.weight_dict)}")
        if not terms:
            raise ValueError("no loss terms to add up")
        items = iter(terms.items())
        name, value = next(items)
        total = value * weight_dict[name]
        for name, value in items:
            total = total + value * weight_dict[name]
        return total

    def extra_repr(self) -> str:
        return (
            f"weight_dict={self.weight_dict}, unknown_mode={self.unknown_mode!r}, "
            f"gather_features={self.gather_features}, sscl_min_confidence={self.sscl_min_confidence}, "
            f"contrastive_warmup={self.contrastive_warmup}"
        )
