"""``sadcl visualize``: attention maps per label, label-feature t-SNE, and attention-in-box scores (MOM-30)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sadcl.cli.options import add_device, add_threshold, add_thresholds_file


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(
        name,
        help="attention maps, label-feature t-SNE, attention-in-box score",
        description="Visualise what a model attends to and how its label-level features cluster.",
    )
    what = p.add_subparsers(dest="what", metavar="WHAT", required=True)

    a = what.add_parser("attention", help="the image and each predicted label's attention, as one PNG")
    a.add_argument("checkpoint", help="checkpoint file, or a model directory")
    a.add_argument("image", help="image file")
    a.add_argument("--out", required=True, help="output PNG")
    a.add_argument(
        "--top-k",
        type=int,
        default=None,
        help="show at most the k best labels above threshold, as in predict (at least one is shown; default: all)",
    )
    add_threshold(a)
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
    e.add_argument(
        "checkpoints", nargs="+", metavar="CHECKPOINT", help="one or two checkpoint files (or model directories)"
    )
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
    b.add_argument("checkpoint", help="checkpoint file or model directory (trained on MOM-30)")
    b.add_argument("--split", default="test", help="dataset split (default: test)")
    b.add_argument("--n", type=int, default=1000, help="number of images (default: 1000)")
    add_threshold(b)
    add_thresholds_file(b)
    _data_args(b)
    b.set_defaults(run=run_attention_boxes)


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", default=None, help="dataset directory (default: the checkpoint's data.root)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")


def run_attention(args: argparse.Namespace) -> int:
    from sadcl.data.images import load_image
    from sadcl.inference.attention import attention_grid, label_attention
    from sadcl.inference.open import open_model

    trained = open_model(args.checkpoint, thresholds=args.thresholds, threshold=args.threshold, device=args.device)
    result = label_attention(
        trained.torch_model("sadcl visualize"),
        load_image(args.image),
        class_names=trained.class_names,
        transform=trained.transform,
        threshold=trained.thresholds,
        top_k=args.top_k,
        display_size=args.size,
    )
    grid = attention_grid(result)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out)
    print(f"wrote {args.out} ({grid.width}x{grid.height})")
    return 0


def run_embeddings(args: argparse.Namespace) -> int:
    from sadcl.data.run_loaders import build_eval_loader
    from sadcl.inference.embeddings import collect_label_features, plot_embedding_panels, separation_score
    from sadcl.inference.open import open_model

    if len(args.checkpoints) > 2:
        raise ValueError(f"give one or two checkpoints, got {len(args.checkpoints)}")
    panels = []
    names = None
    for path in args.checkpoints:
        trained = open_model(path, data_root=args.data_root)
        if names is not None and trained.class_names != names:
            raise ValueError(f"{path} has different classes from {args.checkpoints[0]}: compare models of one dataset")
        names = trained.class_names
        dataset = build_eval_loader(trained.config, args.split, class_names=names, shard=False).dataset
        features, labels = collect_label_features(
            trained.torch_model("sadcl visualize"), dataset, n=args.n, batch_size=args.batch_size
        )
        score = separation_score(features, labels)
        title = f"{_title(path, trained.config)} (silhouette {score:.3f})"
        print(f"{path}: {len(features)} features of {args.split}, cosine silhouette {score:.3f}")
        panels.append((title, features, labels))
    plot_embedding_panels(panels, args.out, class_names=names, perplexity=args.perplexity, seed=args.seed)
    print(f"wrote {args.out}")
    return 0


def _title(path: str, config) -> str:
    kind = config.model.architecture
    return f"{kind}: {Path(path).name}"


def run_attention_boxes(args: argparse.Namespace) -> int:
    from sadcl.data.mom30 import mom30_box_samples
    from sadcl.data.run_loaders import build_eval_loader
    from sadcl.inference.attention import attention_box_score
    from sadcl.inference.open import open_model

    trained = open_model(
        args.checkpoint, thresholds=args.thresholds, threshold=args.threshold, data_root=args.data_root
    )
    model, config, class_names = trained.torch_model("sadcl visualize"), trained.config, trained.class_names
    if config.data.format != "mom30":
        raise ValueError(f"attention-in-box needs MOM-30 boxes; this run uses data.format={config.data.format!r}")
    dataset = build_eval_loader(config, args.split, class_names=class_names, shard=False).dataset
    samples, scale = mom30_box_samples(dataset, limit=args.n)
    result = attention_box_score(
        model, samples, threshold=trained.thresholds, box_scale=scale, batch_size=args.batch_size
    )
    print(
        f"{args.checkpoint} on {args.split} ({result['num_images']} images, {result['num_pairs']} predicted true "
        f"labels): attention inside the true box {100 * result['mean_fraction']:.1f}% "
        f"(uniform attention would give {100 * result['mean_box_area_fraction']:.1f}%)"
    )
    worst = sorted(result["per_class"].items(), key=lambda kv: kv[1])[:5]
    print("lowest classes: " + ", ".join(f"{class_names[c]} {100 * v:.1f}%" for c, v in worst))
    return 0
