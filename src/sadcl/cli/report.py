"""``sadcl report``: an offline HTML evaluation report of a checkpoint (optionally compared with another)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from sadcl.cli.options import add_data_options, add_device, add_no_ema, add_thresholds_file, weights

logger = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(
        name,
        help="write an HTML/JSON/CSV evaluation report of a checkpoint",
        description="Score --split (and the validation split for tuned thresholds / temperature scaling) and write "
        "OUT/index.html (one self-contained page: summary, sortable per-class table, PR curves, calibration, "
        "co-occurrence errors, example errors with attention; --compare adds per-class ΔAP and a paired bootstrap "
        "CI of ΔmAP), OUT/report.json and OUT/per_class.csv. Without a temperature, the numbers are those of "
        "`sadcl evaluate`.",
    )
    p.add_argument("checkpoint", help="checkpoint file from `sadcl train`")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--split", default="test", help="split to report on (default: test)")
    p.add_argument("--compare", default=None, metavar="OTHER", help="a second checkpoint (e.g. the baseline)")
    p.add_argument(
        "--temperature",
        choices=("none", "global", "per-class", "file"),
        default="none",
        help="temperature scaling: fit one (global) or one per class on the validation split, or 'file': the one "
        "stored in --thresholds (default: none). A fitted one is written to OUT/thresholds.json.",
    )
    p.add_argument("--threshold", type=float, default=0.5, help="global probability threshold (default: 0.5)")
    add_thresholds_file(
        p,
        help="per-class thresholds JSON (`sadcl tune-thresholds`) as the operating thresholds (default: tuned "
        "on the validation split)",
    )
    p.add_argument(
        "--val-split",
        default=None,
        help="validation split (default: the checkpoint's data.val_split; 'none' to skip tuning on it)",
    )
    add_data_options(p)
    p.add_argument("--bootstrap", type=int, default=500, help="paired bootstrap resamples with --compare (500)")
    p.add_argument("--examples", type=int, default=4, help="worst classes with example errors (0: none; 4)")
    add_device(p)
    p.add_argument("--amp", action="store_true", help="autocast on CUDA (default: float32)")
    add_no_ema(p)
    p.set_defaults(run=run)


def _val_split(args: argparse.Namespace, config: Any) -> str | None:
    if args.val_split is not None:
        return None if args.val_split.lower() == "none" else args.val_split
    return config.data.val_split


def _train_labels(config: Any, class_names: list[str]) -> tuple[Any, Any]:
    """Training labels for the co-occurrence lift (no image is read), or (None, None) when they cannot be built."""
    from sadcl.data import build_dataset

    try:
        ds = build_dataset(config.data, config.data.train_split, None, class_names=class_names)
    except (OSError, ValueError) as e:
        logger.warning("no training labels for the co-occurrence lift (%s)", e)
        return None, None
    return ds.targets.numpy(), None if ds.ignore is None else ds.ignore.numpy()


def _score(trained: Any, args: argparse.Namespace, *, need_val: bool) -> tuple[Any, list[str]]:
    """One opened model's test (and val) outputs: ``(ModelRun, class_names)``."""
    from sadcl.report.collect import ModelRun, checkpoint_info, score_model

    trained.torch_model("sadcl report")
    val = _val_split(args, trained.config) if need_val else None
    if val == args.split:
        raise ValueError(f"--val-split {val} is the reported split; tuning and calibrating on it would be optimistic")
    splits = [args.split] + ([val] if val else [])
    outputs, class_names = score_model(
        trained, splits, device=args.device, batch_size=args.batch_size, workers=args.workers, amp=args.amp
    )
    info = checkpoint_info(trained)
    name = info.get("stage") or trained.path.stem
    return ModelRun(name=str(name), info=info, test=outputs[args.split], val=outputs.get(val)), class_names


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from sadcl.inference.open import open_model
    from sadcl.inference.thresholds import load_temperature, save_thresholds
    from sadcl.report.analysis import raw_thresholds
    from sadcl.report.build import build_report_data, write_report
    from sadcl.report.examples import pick_examples, render_examples

    if args.bootstrap < 1:
        raise ValueError(f"--bootstrap must be >= 1, got {args.bootstrap}")
    if args.temperature == "file" and args.thresholds is None:
        raise ValueError("--temperature file reads the temperature stored in --thresholds FILE; give --thresholds")
    ours_model = open_model(
        args.checkpoint, weights=weights(args), thresholds=args.thresholds, data_root=args.data_root
    )
    # Operating thresholds: the thresholds file, or the ones a model directory ships, else tuned on val (analyze()).
    fixed = ours_model.threshold_source in ("file", "model")
    need_val = not fixed or args.temperature in ("global", "per-class")
    ours, class_names = _score(ours_model, args, need_val=need_val)
    model, config, transform = ours_model.model, ours_model.config, ours_model.transform
    runs = [ours]
    if args.compare:
        other, other_names = _score(
            open_model(args.compare, weights=weights(args), data_root=args.data_root), args, need_val=need_val
        )
        if other_names != class_names:
            raise ValueError(f"--compare {args.compare}: its classes differ from {args.checkpoint}'s")
        if other.name == ours.name:  # two runs of the same stage: tell them apart by their files
            ours.name, other.name = args.checkpoint, args.compare
        runs.append(other)
    if ours.val is None and args.temperature in ("global", "per-class"):
        raise ValueError(f"--temperature {args.temperature} needs a validation split (--val-split)")

    thresholds = ours_model.thresholds if fixed else None
    temperature = None
    if args.temperature == "file":
        temperature = load_temperature(args.thresholds, class_names)
        if temperature is None:
            raise ValueError(f"{args.thresholds}: no 'temperature' stored (write one with sadcl report --temperature)")
    train_targets, train_ignore = _train_labels(config, class_names)
    data = build_report_data(
        runs,
        class_names,
        checkpoint=args.checkpoint,
        split=args.split,
        bootstrap=args.bootstrap,
        threshold=args.threshold,
        thresholds=thresholds,
        thresholds_source=str(ours_model.thresholds_path) if fixed else None,
        temperature_mode=args.temperature,
        temperature=temperature,
        train_targets=train_targets,
        train_ignore=train_ignore,
    )
    first = data["models"][0]
    if args.examples > 0 and ours.test.paths:
        a = first["_arrays"]
        picked = pick_examples(
            [row["AP"] for row in first["per_class"]], a["probs"], a["pred"], a["pos"], a["keep"], classes=args.examples
        )
        data["examples"] = render_examples(model, ours.test.paths, picked, transform=transform)
    paths = write_report(args.out, data)
    fitted = first["calibration"]["temperature"]
    if args.temperature in ("global", "per-class"):
        # Thresholds on sigmoid(logits), as every tool applies them, with the temperature beside them.
        out = Path(args.out) / "thresholds.json"
        operating = raw_thresholds(first["_arrays"]["operating"], np.asarray(fitted))
        save_thresholds(out, operating, class_names, temperature=fitted)
        paths["thresholds"] = out
    s = first["summary"]
    print(
        f"{args.checkpoint} on {args.split}: mAP {s['mAP']:.2f}, CF1 {s['at_operating']['CF1']:.2f} / OF1 "
        f"{s['at_operating']['OF1']:.2f} at the operating thresholds ({s['operating_thresholds']})"
    )
    if "compare" in data:
        c = data["compare"]
        ci = c["bootstrap"]
        print(f"vs {args.compare}: ΔmAP {c['delta_mAP']:+.2f} [{ci['low']:+.2f}, {ci['high']:+.2f}]")
    for path in paths.values():
        print(f"wrote {path}")
    return 0
