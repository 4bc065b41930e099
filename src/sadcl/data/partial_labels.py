"""Partial labels: the label-state syntax of the manifest readers and the seeded hiding of training labels.

A label is positive, negative or unknown. Unknown labels travel as ``MultiLabelDataset.ignore`` (True = unknown,
target stored as 0); losses, the memory bank, prototypes and metrics leave them out (see ``loss.unknown_mode``).

Label-state syntax (manifest CSV/JSONL and image-folder labels files): ``cat`` positive, ``-cat`` explicit negative,
``?cat`` unknown. A token that is itself a name of the given class list is that class, so a class may be called
``-1`` or ``?``. Classes a row does not list are negative or unknown, as ``unlisted`` says.

Hiding (:func:`hide_labels`, the partial-label benchmark protocol): a seeded uniform draw over the ``N x C`` entries
keeps exactly ``round(known_fraction * N * C)`` of them known. The draw for a seed is one permutation whose first
entries are the known ones, so a smaller fraction's known set is contained in a larger one's (nested curves).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from sadcl.data.base import MultiLabelDataset
from sadcl.data.images import DataError

__all__ = ["PREFIX", "UNLISTED", "apply_known_fraction", "hide_labels", "label_states", "split_names"]

UNLISTED = ("negative", "unknown")
"""What a class that a row does not list is."""

PREFIX = {"-": "negative", "?": "unknown"}
"""Label-token prefixes and the state they give."""


def label_states(
    tokens: Iterable[str],
    *,
    negatives: Iterable[str] = (),
    unknown: Iterable[str] = (),
    names: set[str] | None = None,
    where: str,
) -> tuple[list[str], list[str], list[str]]:
    """Sort one row's label tokens into ``(positives, negatives, unknowns)`` (class names, first-seen order).

    Args:
        tokens: The labels field: ``cat``, ``-cat`` or ``?cat``.
        negatives: Names from a separate ``negatives`` column/field (plain names, no prefix).
        unknown: Names from a separate ``unknown`` column/field (plain names, no prefix).
        names: The given class list, if any (an exact class name is never read as a prefix).
        where: ``file: line n`` for the error messages.

    Raises:
        DataError: a prefix without a name, a prefixed name in a plain-name field, or a class given two states.
    """
    state: dict[str, str] = {}

    def put(name: str, kind: str, token: str) -> None:
        if not name:
            raise DataError(f"{where}: label {token!r}: expected a class name after {token[:1]!r}")
        if state.get(name, kind) != kind:
            raise DataError(f"{where}: class {name!r} is both {state[name]} and {kind}; expected one state per class")
        state[name] = kind

    def prefixed(token: str) -> bool:
        return token[:1] in PREFIX and not (names is not None and token in names)

    for token in tokens:
        if prefixed(token):
            put(token[1:].strip(), PREFIX[token[0]], token)
        else:
            put(token, "positive", token)
    for field_name, kind, values in (("negatives", "negative", negatives), ("unknown", "unknown", unknown)):
        for token in values:
            if prefixed(token):
                raise DataError(f"{where}: field {field_name!r}: {token!r}: expected plain class names (no prefix)")
            put(token, kind, token)
    pos, neg, unk = ([n for n, k in state.items() if k == kind] for kind in ("positive", "negative", "unknown"))
    return pos, neg, unk


def hide_labels(num_samples: int, num_classes: int, *, known_fraction: float, seed: int = 0) -> torch.Tensor:
    """The seeded unknown-label mask of the benchmark protocol (see the module docstring).

    Args:
        num_samples: N.
        num_classes: C.
        known_fraction: Share of the ``N * C`` entries that stay known, in ``(0, 1]``.
        seed: Seeds the draw (the same seed gives the same mask, and nested masks across fractions).

    Returns:
        Bool ``[N, C]``, True = unknown.
    """
    if not 0.0 < float(known_fraction) <= 1.0:
        raise DataError(f"known_fraction must be in (0, 1], got {known_fraction!r}")
    total = num_samples * num_classes
    known = int(round(float(known_fraction) * total))
    gen = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(total, generator=gen)
    hidden = torch.ones(total, dtype=torch.bool)
    hidden[order[:known]] = False
    return hidden.reshape(num_samples, num_classes)


def apply_known_fraction(dataset: MultiLabelDataset, *, known_fraction: float, seed: int = 0) -> MultiLabelDataset:
    """A copy of ``dataset`` in which only ``known_fraction`` of the labels are known (others become unknown).

    Labels the dataset already marks unknown stay unknown. ``known_fraction=1`` returns the dataset itself.
    """
    if float(known_fraction) == 1.0:
        return dataset
    hidden = hide_labels(len(dataset), dataset.num_classes, known_fraction=known_fraction, seed=seed)
    ignore = hidden if dataset.ignore is None else hidden | dataset.ignore
    return MultiLabelDataset(
        dataset.paths,
        dataset.targets,  # zeroed at the unknown entries by MultiLabelDataset
        dataset.class_names,
        ignore=ignore,
        transform=dataset.transform,
        info=dataset.info,
    )


def split_names(value: object, sep: str | None, where: str) -> Sequence[str]:
    """Names of a ``negatives``/``unknown`` field: a list of strings or a joined string (empty/None: none)."""
    if value is None or value == "":
        return []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value if v.strip()]
    if isinstance(value, str):
        return [v.strip() for v in value.split(sep) if v.strip()]
    raise DataError(f"{where}: expected class names as a string or a list of strings, got {value!r}")
