"""Assemble a report from model outputs and write ``index.html``, ``report.json`` and ``per_class.csv``.

:func:`build_report_data` needs only arrays (:class:`~sadcl.report.collect.ModelRun`), so it serves the CLI (which
scores checkpoints) and the benchmark (synthetic scores) alike; example thumbnails are added by the caller that has
a model (:mod:`sadcl.report.examples`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from sadcl.escape import csv_cell
from sadcl.io import atomic_write_text, finite
from sadcl.metrics import mean_average_precision
from sadcl.report.analysis import analyze
from sadcl.report.collect import ModelRun
from sadcl.report.compare import bootstrap_delta_map
from sadcl.report.html import render_page

logger = logging.getLogger(__name__)

__all__ = ["build_report_data", "to_jsonable", "write_report"]


def build_report_data(
    runs: list[ModelRun],
    class_names: list[str],
    *,
    checkpoint: str,
    split: str,
    bootstrap: int = 500,
    seed: int = 0,
    **analyze_kwargs: Any,
) -> dict[str, Any]:
    """The whole report of one model, or of two on the same images (``runs[1]`` = the one compared against).

    Args:
        runs: One or two models' outputs.
        class_names: The C class names (the same for both models).
        checkpoint: The reported checkpoint (shown in the page).
        split: The evaluated split's name.
        bootstrap: Resamples of the paired bootstrap (compare mode).
        seed: Seed of the bootstrap.
        **analyze_kwargs: Passed to :func:`sadcl.report.analysis.analyze` for every model (thresholds, temperature,
            training labels, ...).

    Returns:
        ``{"checkpoint", "split", "version", "class_names", "models": [analysis, ...], "compare"?}``; each analysis
        keeps its ``"_arrays"`` for the examples (dropped by :func:`to_jsonable`).
    """
    from sadcl import __version__

    if not 1 <= len(runs) <= 2:
        raise ValueError(f"a report covers one model or compares two, got {len(runs)}")
    if len(runs) == 2:
        a, b = runs[0].test, runs[1].test
        if a.logits.shape != b.logits.shape or not np.array_equal(a.targets, b.targets) or (a.paths != b.paths):
            raise ValueError(
                f"--compare needs both models scored on the same images and labels: {runs[0].name} has "
                f"{a.logits.shape}, {runs[1].name} has {b.logits.shape} (or their labels/files differ)"
            )
    models = [analyze(run, class_names, **analyze_kwargs) for run in runs]
    data: dict[str, Any] = {
        "checkpoint": checkpoint,
        "split": split,
        "version": __version__,
        "class_names": list(class_names),
        "models": models,
    }
    if len(runs) == 2:
        ours, other = models
        test = runs[0].test
        probs_ours, probs_other = ours["_arrays"]["probs"], other["_arrays"]["probs"]
        delta = [
            None if x["AP"] is None or y["AP"] is None else x["AP"] - y["AP"]
            for x, y in zip(ours["per_class"], other["per_class"])
        ]
        delta_map = mean_average_precision(probs_ours, test.targets, ignore=test.ignore) - mean_average_precision(
            probs_other, test.targets, ignore=test.ignore
        )
        data["compare"] = {
            "model": runs[0].name,
            "against": runs[1].name,
            "delta_mAP": finite(delta_map),
            "per_class_delta": delta,
            "bootstrap": bootstrap_delta_map(
                probs_other, probs_ours, test.targets, ignore=test.ignore, resamples=bootstrap, seed=seed
            ),
        }
    return data


def to_jsonable(x: Any) -> Any:
    """Plain JSON data: arrays to (rounded) lists, NaN/inf to None, ``_``-prefixed keys dropped."""
    if isinstance(x, dict):
        return {k: to_jsonable(v) for k, v in x.items() if not str(k).startswith("_")}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return to_jsonable(np.round(x, 4).tolist() if x.dtype.kind == "f" else x.tolist())
    if isinstance(x, (np.floating, float)):
        return finite(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def per_class_csv(data: dict[str, Any]) -> str:
    """The per-class table as CSV (one row per class, in class order; compare mode adds the other AP and ΔAP).

    Text cells (class names) that a spreadsheet would run as a formula get a leading ``'``
    (:func:`sadcl.escape.csv_cell`); numbers are written as they are.
    """
    first = data["models"][0]["per_class"]
    keys = list(first[0]) if first else ["class"]
    compare = data.get("compare")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(keys + (["AP_" + compare["against"], "delta_AP"] if compare else []))
    for c, row in enumerate(first):
        values = [
            "" if row[k] is None else (f"{row[k]:.6g}" if isinstance(row[k], float) else csv_cell(row[k])) for k in keys
        ]
        if compare:
            other, d = data["models"][1]["per_class"][c]["AP"], compare["per_class_delta"][c]
            values += ["" if other is None else f"{other:.6g}", "" if d is None else f"{d:.6g}"]
        writer.writerow(values)
    return buf.getvalue()


def write_report(out_dir: str | Path, data: dict[str, Any]) -> dict[str, Path]:
    """Write ``index.html``, ``report.json`` and ``per_class.csv`` into ``out_dir`` (each atomically).

    Returns:
        ``{"html": path, "json": path, "csv": path}``.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    plain = to_jsonable(data)
    paths = {"html": out / "index.html", "json": out / "report.json", "csv": out / "per_class.csv"}
    atomic_write_text(paths["html"], render_page(plain))
    report = {k: v for k, v in plain.items() if k != "examples"}  # thumbnails stay in the page
    report["examples"] = [{k: v for k, v in e.items() if k != "image"} for e in plain.get("examples") or []]
    atomic_write_text(paths["json"], json.dumps(report, indent=1) + "\n")
    atomic_write_text(paths["csv"], per_class_csv(plain))
    for path in paths.values():
        logger.info("wrote %s (%.1f KB)", path, path.stat().st_size / 1024)
    return paths
