"""``sadcl visualize``: attention maps per label, label-feature t-SNE, and attention-in-box scores (MOM-30)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sadcl.cli.options import add_device, add_thresholds_file


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(
        name,
        help="attention maps, label-feature t-SNE, attention-in-box score",
        description="Visualise what a model attends to and how its label-level features cluster.",
    )
    what = p.add_subparsers(dest="what", metavar="WHAT", required=True)

    a = what.add_parser("attention", help="the image and each predicted label's attention, as one PNG")
    a.add_argument("checkpoint", help="checkpoint file")
    a.add_argument("image", help="image file")
    a.add_argument("--out", required=True, help="output PNG")
    a.add_argument(
        "--top-k",
        type=int,
        default=None,
        help="show at most the k best labels above threshold, as in predict (at least one is shown; default: all)",
    )
    a.add_argument("--threshold", type=float, default=0.5, help="probability threshold (default: 0.5)")
    add_thresholds_file(a)
    a.add_argument("--size", type=int, default=256, help="tile size in pixels (default: 256)")
    add_device(a, default="cpu")
    a.set_defaults(run=run_attention)

    e = what.add_parser(
        "embeddings",
        help="t-SNE of label-level features coloured by class (one panel per model)",
        description="t-SNE of the label-level features of true labels on a split; give two "
        "checkpoints (e.g. baseline and SADCL) for side-by-side panels.",
    )
    e.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="one or two checkpoint files")
    e.add_argument("--out", required=True, help="output PNG")
    e.add_argument("--n", type=int, default=2000, help="number of (image, true label) features (default: 2000)")
    e.add_argument("--split", default="test", help="dataset split (default: test)")
    e.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity (default: 30)")
    e.add_argument("--seed", type=int, default=0, help="t-SNE random state (default: 0)")
    _data_args(e)
    e.set_defaults(run=run_embeddings)

    b = what.add_parser(
        "attention-boxes",
        help="mean fraction of attention inside the true box (MOM-30)",
        description="Average, over predicted true labels of MOM-30 images, the fraction of the "
        "label's attention mass that lies inside the object's box.",
    )
    b.add_argument("checkpoint", help="checkpoint file (trained on MOM-30)")
    b.add_argument("--split", default="test", help="dataset split (default: test)")
    b.add_argument("--n", type=int, default=1000, help="number of images (default: 1000)")
    b.add_argument("--threshold", type=float, default=0.5, help="probability threshold (default: 0.5)")
    _data_args(b)
    b.set_defaults(run=run_attention_boxes)


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", default=None, help="dataset directory (default: the checkpoint's data.root)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")


def run_attention(args: argparse.Namespace) -> int:
    from sadcl.checkpoint import load_model
    from sadcl.data.images import load_image
    from sadcl.data.transforms import build_eval_transform
    from sadcl.distributed import resolve_device
    from sadcl.inference.attention import attention_grid, label_attention

    model, config, class_names = load_model(args.checkpoint)
    model.to(resolve_device(args.device))
    threshold = args.threshold
    if args.thresholds:
        from sadcl.inference.thresholds import load_thresholds

        threshold = load_thresholds(args.thresholds, class_names)
    image = load_image(args.image)
    result = label_attention(
        model,
        image,
        class_names=class_names,
        transform=build_eval_transform(config),
        threshold=threshold,
        top_k=args.top_k,
        display_size=args.size,
    )
    grid = attention_grid(result)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out)
    print(f"wrote {args.out} ({grid.width}x{grid.height})")
    return 0


def run_embeddings(args: argparse.Namespace) -> int:
    from sadcl.checkpoint import load_model
    from sadcl.data import build_dataset
    from sadcl.data.transforms import build_eval_transform
    from sadcl.inference.embeddings import collect_label_features, plot_embedding_panels, separation_score

    if len(args.checkpoints) > 2:
        raise ValueError(f"give one or two checkpoints, got {len(args.checkpoints)}")
    panels = []
    names = None
    for path in args.checkpoints:
        model, config, class_names = load_model(path, data_root=args.data_root)
        if names is not None and class_names != names:
            raise ValueError(f"{path} has different classes from {args.checkpoints[0]}: compare models of one dataset")
        names = class_names
        dataset = build_dataset(config.data, args.split, build_eval_transform(config), class_names=class_names or None)
        features, labels = collect_label_features(model, dataset, n=args.n, batch_size=args.batch_size)
        score = separation_score(features, labels)
        title = f"{_title(path, config)} (silhouette {score:.3f})"
        print(f"{path}: {len(features)} features of {args.split}, cosine silhouette {score:.3f}")
        panels.append((title, features, labels))
    plot_embedding_panels(panels, args.out, class_names=names, perplexity=args.perplexity, seed=args.seed)
    print(f"wrote {args.out}")
    return 0


def _title(path: str, config) -> str:
    kind = config.model.architecture
    return f"{kind}: {Path(path).name}"


def run_attention_boxes(args: argparse.Namespace) -> int:
    from sadcl.checkpoint import load_model
    from sadcl.data.mom30 import mom30_box_samples
    from sadcl.data.transforms import build_eval_transform
    from sadcl.inference.attention import attention_box_score

    model, config, class_names = load_model(args.checkpoint, data_root=args.data_root)
    samples, scale = mom30_box_samples(config.data, args.split, build_eval_transform(config), limit=args.n)
    result = attention_box_score(model, samples, threshold=args.threshold, box_scale=scale, batch_size=args.batch_size)
    print(
        f"{args.checkpoint} on {args.split} ({result['num_images']} images, {result['num_pairs']} predicted true "
        f"labels): attention inside the true box {100 * result['mean_fraction']:.1f}% "
        f"(uniform attention would give {100 * result['mean_box_area_fraction']:.1f}%)"
    )
    worst = sorted(result["per_class"].items(), key=lambda kv: kv[1])[:5]
    print("lowest classes: " + ", ".join(f"{class_names[c]} {100 * v:.1f}%" for c, v in worst))
    return 0
