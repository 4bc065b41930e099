"""``sadcl build-prototypes``: category prototypes [C, d] from a trained stage-1 model (docs/spec.md §1.11)."""

from __future__ import annotations

import argparse

from sadcl.cli.options import add_data_options, add_device


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(
        name,
        help="build category prototypes from a stage-1 checkpoint",
        description="Run a stage-1 (baseline) checkpoint over the training split (evaluation "
        "transform) and save one prototype per class. Rules: official = mean over the "
        "ground-truth positives of 1[sigmoid(logit) > tau] * feature (divided by the "
        "number of positives); mean_selected = mean of the selected features only; kmeans = "
        "centroid of the largest of k clusters of the selected features.",
    )
    p.add_argument("checkpoint", help="stage-1 checkpoint (e.g. RUN/baseline/best.pt)")
    p.add_argument("--out", required=True, help="output .npy file ([C, d] float32); a .json with counts goes beside")
    p.add_argument("--threshold", type=float, default=0.85, help="tau on sigmoid(logit) (default 0.85)")
    p.add_argument("--rule", choices=("official", "mean_selected", "kmeans"), default="official")
    p.add_argument("--k", type=int, default=3, help="clusters for --rule kmeans")
    p.add_argument(
        "--fallback",
        choices=("mean_positives", "error"),
        default="mean_positives",
        help="a class with no positive above --threshold: use the mean of all its positives (default) or "
        "stop with an error; never a zero prototype",
    )
    p.add_argument("--split", default=None, help="split (default: the checkpoint's data.train_split)")
    add_data_options(p, workers=False)
    add_device(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from sadcl.distributed import resolve_device
    from sadcl.inference.open import open_model
    from sadcl.training.prototypes import build_prototypes

    if not 0.0 < args.threshold < 1.0:
        raise ValueError(f"--threshold must be in (0, 1), got {args.threshold}")
    trained = open_model(args.checkpoint, data_root=args.data_root)
    trained.torch_model("sadcl build-prototypes")
    protos, counts = build_prototypes(
        trained,
        out=args.out,
        threshold=args.threshold,
        rule=args.rule,
        split=args.split or trained.config.data.train_split,
        device=resolve_device(args.device),
        batch_size=args.batch_size,
        k=args.k,
        progress=True,
        fallback=args.fallback,
    )
    names = list(trained.class_names or range(len(counts["positives"])))
    print(f"wrote prototypes {list(protos.shape)} to {args.out} ({args.rule}, tau={args.threshold})")
    health = counts["health"]
    print(f"{'class':<16} {'positives':>9} {'selected':>8} {'norm':>8}")
    for name, p, s, nrm in zip(names, counts["positives"], counts["selected"], health["norms"]):
        note = (
            "   <- mean of all positives (none selected)"
            if s == 0
            else ("   <- near zero" if str(name) in health["near_zero"] else "")
        )
        print(f"{str(name):<16} {p:>9} {s:>8} {nrm:>8.3f}{note}")
    return 0
