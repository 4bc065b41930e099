"""How long ``sadcl report`` takes and how big its page is for a large split, on synthetic scores (no model).

Usage:
    python benchmarks/bench_report.py                     # 5 000 test images x 80 classes, compare mode
    python benchmarks/bench_report.py --images 500 --classes 20 --no-compare

Synthetic data: labels with per-class frequencies between 1 % and 20 % plus a co-occurring pair structure, logits of
two models (a better one and an over-confident one) as label signal plus noise, for a test split and a validation
split of the same size, and training labels for the co-occurrence lift. Timed: everything ``sadcl report`` does after
scoring (temperature fit on val, thresholds tuned on val, analysis of both models, paired bootstrap, HTML/JSON/CSV
written), i.e. :func:`sadcl.report.build_report_data` + :func:`sadcl.report.write_report`. Target (issue #15): under
a minute on 2 cores and the HTML under ~10 MB for 5 000 x 80. Example thumbnails need a model and are not included
(at most 24 JPEGs of a few KB each).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from sadcl.report import build_report_data, write_report
from sadcl.report.collect import ModelRun, SplitOutputs


def synthetic_labels(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    """Labels [n, c] with frequencies in [1 %, 20 %]; class 2k+1 follows class 2k half of the time."""
    freq = np.linspace(0.01, 0.2, c)
    y = rng.random((n, c)) < freq
    y[:, 1::2] |= y[:, 0::2][:, : y[:, 1::2].shape[1]] & (rng.random((n, c // 2)) < 0.5)
    return y.astype(np.float32)


def synthetic_logits(rng: np.random.Generator, y: np.ndarray, *, signal: float, scale: float) -> np.ndarray:
    return (scale * (signal * (2 * y - 1) + rng.normal(0, 1.0, y.shape)) - 1.5).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--bootstrap", type=int, default=500, help="paired bootstrap resamples (the CLI's default)")
    ap.add_argument("--no-compare", action="store_true")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    n, c = args.images, args.classes
    names = [f"class_{i:02d}" for i in range(c)]
    y_test, y_val, y_train = (synthetic_labels(rng, k, c) for k in (n, n, 4 * n))

    def run(name: str, signal: float, scale: float) -> ModelRun:
        return ModelRun(
            name=name,
            info={"stage": name, "weights": "ema"},
            test=SplitOutputs(synthetic_logits(rng, y_test, signal=signal, scale=scale), y_test, None),
            val=SplitOutputs(synthetic_logits(rng, y_val, signal=signal, scale=scale), y_val, None),
        )

    runs = [run("sadcl", 1.6, 2.5)] + ([] if args.no_compare else [run("baseline", 1.3, 1.0)])
    start = time.perf_counter()
    data = build_report_data(
        runs,
        names,
        checkpoint="synthetic",
        split="test",
        bootstrap=args.bootstrap,
        temperature_mode="per-class",
        train_targets=y_train,
    )
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_report(tmp, data)
        elapsed = time.perf_counter() - start
        sizes = {k: p.stat().st_size / 1e6 for k, p in paths.items()}
    print(
        f"report for {n} images x {c} classes ({len(runs)} model{'s' if len(runs) > 1 else ''}, "
        f"{args.bootstrap} bootstrap resamples): {elapsed:.1f} s; index.html {sizes['html']:.2f} MB, "
        f"report.json {sizes['json']:.2f} MB, per_class.csv {sizes['csv'] * 1000:.1f} KB"
    )


if __name__ == "__main__":
    main()
