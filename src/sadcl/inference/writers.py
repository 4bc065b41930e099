"""Prediction outputs: JSON lines and CSV, to a file or a stream (``-`` / None = stdout)."""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from sadcl.escape import csv_cell

__all__ = ["write_csv", "write_json"]


def _open_out(out: str | os.PathLike | TextIO | None) -> tuple[TextIO, bool]:
    """(stream, whether we opened it): None and ``"-"`` mean stdout."""
    if out is None or str(out) == "-":
        return sys.stdout, False
    if hasattr(out, "write"):
        return out, False  # type: ignore[return-value]
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "w", encoding="utf-8", newline=""), True


def write_json(results: Sequence[dict[str, Any]], out: str | os.PathLike | TextIO | None = None) -> None:
    """Write results as a JSON list (``out``: a file path, an open text stream, or None / ``"-"`` for stdout)."""
    stream, opened = _open_out(out)
    try:
        json.dump(list(results), stream, indent=2)
        stream.write("\n")
    finally:
        if opened:
            stream.close()


def write_csv(results: Sequence[dict[str, Any]], out: str | os.PathLike | TextIO | None = None) -> None:
    """Write results as CSV ``image,label,score``: one row per predicted label, best first.

    An image without a predicted label gets one row with empty ``label`` and ``score``, so every image appears.
    Scores have 6 decimals. An image path or label starting with ``= + - @`` gets a leading ``'`` so that a
    spreadsheet shows it as text instead of running it as a formula (:func:`sadcl.escape.csv_cell`).
    """
    stream, opened = _open_out(out)
    try:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(["image", "label", "score"])
        for r in results:
            if not r["labels"]:
                writer.writerow([csv_cell(r["image"]), "", ""])
            for lab in r["labels"]:
                writer.writerow([csv_cell(r["image"]), csv_cell(lab["label"]), f"{lab['score']:.6f}"])
    finally:
        if opened:
            stream.close()
