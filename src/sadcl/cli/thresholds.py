"""``sadcl tune-thresholds``: per-class F1-maximising thresholds from the validation split, checked on test."""

from __future__ import annotations

import argparse
import sys

from sadcl.cli.options import add_data_options, add_device


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(
        name,
        help="tune per-class thresholds on the validation split",
        description="Choose each class's F1-maximising threshold on --split (with a floor and "
        "shrinkage toward the global best threshold for rare classes), write them as "
        "JSON {class: threshold}, and print CF1/OF1 on --eval-split at 0.5 and with the "
        "tuned thresholds.",
    )
    p.add_argument("checkpoint", help="checkpoint file from `sadcl train`")
    p.add_argument("--out", required=True, help="output JSON file")
    p.add_argument("--split", default="val", help="split to tune on (default: val)")
    p.add_argument("--eval-split", default="test", help="split to report on; 'none' to skip (default: test)")
    p.add_argument("--floor", type=float, default=0.05, help="lowest allowed threshold (default: 0.05)")
    p.add_argument("--ceiling", type=float, default=0.95, help="highest allowed threshold (default: 0.95)")
    p.add_argument(
        "--min-positives",
        type=int,
        default=5,
        help="classes with fewer validation positives use the global threshold (default: 5)",
    )
    p.add_argument(
        "--smoothing",
        type=float,
        default=10.0,
        help="pseudo-count pulling rare classes toward the global threshold (default: 10)",
    )
    add_data_options(p, workers=False)
    add_device(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from sadcl.distributed import resolve_device
    from sadcl.inference.open import open_model
    from sadcl.inference.thresholds import save_thresholds, tune_thresholds
    from sadcl.metrics import threshold_metrics

    trained = open_model(args.checkpoint, data_root=args.data_root)
    model, class_names = trained.torch_model("sadcl tune-thresholds"), trained.class_names
    device = resolve_device(args.device)
    val = _split_scores(model, trained.config, args.split, device=device, batch_size=args.batch_size, names=class_names)
    thr = tune_thresholds(
        val["probs"],
        val["targets"],
        ignore=val["ignore"],
        floor=args.floor,
        ceiling=args.ceiling,
        min_positives=args.min_positives,
        smoothing=args.smoothing,
    )
    save_thresholds(args.out, thr, class_names)
    print(
        f"wrote {len(thr)} thresholds to {args.out} (tuned on {args.split}: {len(val['probs'])} images; "
        f"min {thr.min():.3f}, median {float(sorted(thr)[len(thr) // 2]):.3f}, max {thr.max():.3f})"
    )
    splits = [(args.split, val)]
    if args.eval_split.lower() != "none":
        scores = _split_scores(
            model, trained.config, args.eval_split, device=device, batch_size=args.batch_size, names=class_names
        )
        splits.append((args.eval_split, scores))
    print(f"{'split':<8} {'thresholds':<10} {'CF1':>6} {'OF1':>6} {'CF1(mean F1_c)':>15}")
    for split, res in splits:
        for label, t in (("0.5", 0.5), ("tuned", thr)):
            m = threshold_metrics(res["probs"], res["targets"], threshold=t, ignore=res["ignore"])
            print(f"{split:<8} {label:<10} {m['CF1']:6.2f} {m['OF1']:6.2f} {m['CF1_mean_per_class']:15.2f}")
    return 0


def _split_scores(model, config, split: str, *, device, batch_size: int | None, names: list[str]) -> dict:
    """Probabilities, targets and ignore mask of one split (numpy arrays [N, C], dataset order)."""
    from sadcl.training.engine import score_split

    result, _ = score_split(
        model, config, split, device=device, class_names=names, batch_size=batch_size, progress=sys.stderr.isatty()
    )
    ignore = result["ignore"].numpy()
    return {
        "probs": result["scores"].numpy(),
        "targets": result["targets"].numpy(),
        "ignore": ignore if ignore.any() else None,
    }
