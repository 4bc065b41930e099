"""``sadcl evaluate``: mAP and threshold / top-3 metrics of a checkpoint on a split of its dataset."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sadcl.cli.options import add_data_options, add_device, add_no_ema, add_threshold, add_thresholds_file, weights
from sadcl.io import finite

# Printed and written in this order; summarize() returns these plus per_class_AP and num_classes_with_positives.
_THRESHOLD_KEYS = ("CP", "CR", "CF1", "OP", "OR", "OF1")


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(
        name,
        help="evaluate a checkpoint on a dataset split",
        description="Rebuild the checkpoint's dataset (data.root can be overridden), score --split, "
        "and print mAP, CP/CR/CF1/OP/OR/OF1 at the threshold(s) and the same at top-3. "
        "Runs under torchrun too (each rank scores its share; rank 0 reports).",
    )
    p.add_argument("checkpoint", help="checkpoint file from `sadcl train`, or a model directory")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    add_data_options(p)
    add_threshold(p)
    add_thresholds_file(p)
    add_device(p)
    p.add_argument("--amp", action="store_true", help="autocast on CUDA (default: float32)")
    add_no_ema(p)
    p.add_argument("--per-class", action="store_true", help="also print each class's AP")
    p.add_argument("--out", default=None, help="write the metrics as JSON to this file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from sadcl import distributed as D
    from sadcl.inference.open import open_model
    from sadcl.training.engine import score_split

    trained = open_model(
        args.checkpoint,
        weights=weights(args),
        thresholds=args.thresholds,
        threshold=args.threshold,
        data_root=args.data_root,
    )
    model = trained.torch_model("sadcl evaluate")
    thresholds_name = None if trained.thresholds_path is None else str(trained.thresholds_path)
    info = D.init_distributed(device=args.device)
    try:
        summary, dataset = score_split(
            model,
            trained.config,
            args.split,
            device=info.device,
            class_names=trained.class_names,
            amp=args.amp,
            batch_size=args.batch_size,
            workers=args.workers,
            threshold=trained.thresholds,
            progress=info.is_main and sys.stderr.isatty(),
        )
        if info.is_main:
            report = _report(
                summary,
                trained.class_names or list(dataset.class_names),
                checkpoint=args.checkpoint,
                split=args.split,
                num_images=len(dataset),
                threshold=thresholds_name or float(trained.thresholds[0]),
            )
            _print(report, per_class=args.per_class)
            if args.out:
                out = Path(args.out)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(report, indent=2) + "\n")
                print(f"wrote {out}")
    finally:
        D.cleanup()
    return 0


def _report(
    summary: dict[str, Any],
    class_names: list[str],
    *,
    checkpoint: str,
    split: str,
    num_images: int,
    threshold: float | str,
) -> dict[str, Any]:
    metrics = {k: finite(v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    metrics["num_classes_with_positives"] = int(summary["num_classes_with_positives"])
    return {
        "checkpoint": str(checkpoint),
        "split": split,
        "num_images": num_images,
        "threshold": threshold,
        "metrics": metrics,
        "per_class_AP": {name: finite(ap) for name, ap in zip(class_names, summary["per_class_AP"])},
    }


def _fmt(x: float | None) -> str:
    return f"{x:6.2f}" if x is not None else f"{'n/a':>6}"


def _print(report: dict[str, Any], *, per_class: bool) -> None:
    m = report["metrics"]
    thr = report["threshold"]
    print(
        f"{report['checkpoint']} on {report['split']}: {report['num_images']} images, "
        f"{len(report['per_class_AP'])} classes ({m['num_classes_with_positives']} with positives), "
        f"threshold {thr if isinstance(thr, str) else f'{thr:g}'}"
    )
    print(f"mAP {_fmt(m['mAP']).strip()}")
    print(f"{'':<10}" + "".join(f"{k:>7}" for k in _THRESHOLD_KEYS))
    print(f"{'threshold':<10}" + "".join(f" {_fmt(m[k])}" for k in _THRESHOLD_KEYS))
    print(f"{'top-3':<10}" + "".join(f" {_fmt(m.get(f'{k}_top3'))}" for k in _THRESHOLD_KEYS))
    if per_class:
        width = max(len(n) for n in report["per_class_AP"]) if report["per_class_AP"] else 5
        print(f"{'class':<{width}}     AP")
        for name, ap in report["per_class_AP"].items():
            print(f"{name:<{width}} {_fmt(ap)}")
