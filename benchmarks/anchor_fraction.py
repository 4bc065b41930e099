"""How many anchor rows the official SSCL keeps: ``sadcl.losses.sscl.official_anchor_fraction`` over random batches.

The official misaligned mask keeps row ``a`` of class ``c`` only when sample ``floor(a/2)`` also has class ``c``, and
divides by every activated row, so at the same weight the official loss is about this fraction of the paper loss
(the ``loss.sscl_anchor_scale: official`` calibration multiplies the paper loss by the same per-batch fraction).

Usage:
    python benchmarks/anchor_fraction.py                  # MOM-30 (demo and study sizes) and a COCO-like matrix
    python benchmarks/anchor_fraction.py --benchmarks-md BENCHMARKS.md   # also write its BENCHMARKS.md section

The COCO-like matrix is synthetic (COCO itself is not on this machine): 80 classes drawn independently with a Zipf
frequency profile whose most frequent class ("person") is in 54 % of the images and whose mean label count is 2.9
per image, COCO-2014's published statistics.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, machine_line, update_section  # noqa: E402


def expected_fraction(labels: np.ndarray, *, batch_size: int = 32, batches: int = 2000, seed: int = 0) -> tuple:
    """Mean and std of the kept fraction over random batches (without replacement) of a label matrix [N, C]."""
    from sadcl.losses.sscl import official_anchor_fraction

    rng = np.random.default_rng(seed)
    t = torch.from_numpy(labels.astype(np.float32))
    vals = [float(official_anchor_fraction(t[rng.choice(len(t), batch_size, replace=False)])) for _ in range(batches)]
    return float(np.mean(vals)), float(np.std(vals))


def coco_like(
    n: int = 20000, *, classes: int = 80, top: float = 0.54, mean_labels: float = 2.9, seed: int = 0
) -> np.ndarray:
    """Synthetic [n, classes] labels with a Zipf profile p_c = top * c^-s, s solved so that sum p_c = mean_labels."""
    ranks = np.arange(1, classes + 1, dtype=np.float64)
    lo, hi = 0.0, 5.0
    for _ in range(100):  # bisection on the exponent
        s = (lo + hi) / 2
        lo, hi = (s, hi) if (top * ranks**-s).sum() > mean_labels else (lo, s)
    p = top * ranks**-s
    return (np.random.default_rng(seed).random((n, classes)) < p).astype(np.float32)


def mom30_labels(n_train: int) -> np.ndarray:
    from sadcl.config import DataConfig
    from sadcl.data import build_dataset

    ds = build_dataset(
        DataConfig(
            format="mom30",
            options={"size": 64, "n_train": n_train, "n_val": 500, "n_test": 1000, "seed": 0, "progress": False},
        ),
        "train",
    )
    return np.asarray(ds.targets, dtype=np.float32)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=2000)
    p.add_argument("--benchmarks-md", default=None, help="write the `anchor_fraction` section of this file")
    args = p.parse_args(argv)
    sets = {
        "MOM-30, 4 000 train images (demo)": mom30_labels(4000),
        "MOM-30, 2 000 train images (study)": mom30_labels(2000),
        "COCO-like (synthetic: 80 classes, Zipf, person 54 %, 2.9 labels/image)": coco_like(),
    }
    lines = [
        "## Kept-anchor fraction of the official SSCL (`benchmarks/anchor_fraction.py`)",
        "",
        f"- Date and machine: {machine_line()}",
        f"- Command: `{command_line()}`",
        f"- {args.batches} random batches of {args.batch_size} per label set; the fraction of activated anchor "
        "rows the official misaligned mask keeps (`sadcl.losses.sscl.official_anchor_fraction`). At one weight, "
        "the official SSCL is about this fraction of the uncalibrated paper SSCL; `loss.sscl_anchor_scale: "
        "official` (the default) multiplies the paper SSCL by each batch's fraction.",
        "",
        "| label set | labels / image | kept fraction (mean ± std over batches) | paper/official strength |",
        "|---|---|---|---|",
    ]
    for name, labels in sets.items():
        mean, std = expected_fraction(labels, batch_size=args.batch_size, batches=args.batches)
        lines.append(f"| {name} | {labels.sum(1).mean():.2f} | {mean:.3f} ± {std:.3f} | {1 / mean:.1f}x |")
    text = "\n".join(lines)
    print(text)
    if args.benchmarks_md:
        update_section("anchor_fraction", text, Path(args.benchmarks_md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
