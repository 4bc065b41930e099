"""``sadcl data ...``: dataset utilities (``sadcl data mom30`` generates the built-in benchmark)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="dataset utilities (build the MOM-30 and emoji benchmarks)")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    m = dsub.add_parser("mom30", help="generate the MOM-30 benchmark (deterministic from --seed)")
    m.add_argument("--out", required=True, help="output directory")
    m.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    m.add_argument("--n-train", type=int, default=20000, help="training images (default 20000)")
    m.add_argument("--n-val", type=int, default=2000, help="validation images (default 2000)")
    m.add_argument("--n-test", type=int, default=5000, help="test images (default 5000)")
    m.add_argument("--seed", type=int, default=0, help="generation seed: same seed, same bytes (default 0)")
    m.add_argument(
        "--objects-p",
        type=float,
        nargs="+",
        default=None,
        metavar="P",
        help="weights of 1, 2, ... objects per image (default 0.15 0.35 0.30 0.20)",
    )
    m.add_argument(
        "--object-size",
        type=float,
        nargs=2,
        default=None,
        metavar=("MIN", "MAX"),
        help="object long side in pixels at size 64, scaled with --size (default 18 32)",
    )
    m.add_argument("--photo-p", type=float, default=None, help="probability of a photo background (default 0.6)")
    m.add_argument(
        "--swap-photos", action="store_true", help="train/val on the test background photo and test on the train one"
    )
    m.add_argument("--workers", type=int, default=1, help="rendering processes (output does not depend on it)")
    m.add_argument("--preview", default=None, metavar="PNG", help="also save a grid of 16 training images")
    m.add_argument("--no-progress", action="store_true", help="no progress bar")
    m.set_defaults(run=run)
    e = dsub.add_parser(
        "emoji", help="build the emoji benchmark (human-written CLDR tags; npm tarballs fetched once, SHA-256 checked)"
    )
    e.add_argument("--out", required=True, help="output directory")
    e.add_argument("--min-emoji", type=int, default=20, help="a class is a tag on at least this many base emoji (20)")
    e.add_argument(
        "--fractions",
        type=float,
        nargs=3,
        default=[0.6, 0.15, 0.25],
        metavar=("TRAIN", "VAL", "TEST"),
        help="share of base emoji per split (default 0.6 0.15 0.25)",
    )
    e.add_argument("--vendors", nargs="+", default=["google", "twitter"], help="image sets (default google twitter)")
    e.add_argument("--no-skin-tones", action="store_true", help="base emoji only (no skin-tone variants)")
    e.add_argument("--seed", type=int, default=0, help="split seed: same seed, same bytes (default 0)")
    e.add_argument("--preview", default=None, metavar="PNG", help="also save a grid of 16 training images")
    e.set_defaults(run=run_emoji)


def run(args: argparse.Namespace) -> int:
    from sadcl.data.mom30 import generate_mom30, read_meta, save_preview

    variant = {
        "objects_p": args.objects_p,
        "object_size": args.object_size,
        "photo_p": args.photo_p,
        "swap_photos": args.swap_photos or None,
    }
    out = generate_mom30(
        args.out,
        size=args.size,
        n_train=args.n_train,
        n_val=args.n_val,
        n_test=args.n_test,
        seed=args.seed,
        progress=not args.no_progress,
        workers=args.workers,
        **{k: v for k, v in variant.items() if v is not None},
    )
    stats = read_meta(out)["stats"]
    print(
        f"MOM-30 in {out}: "
        + ", ".join(f"{s} {v['images']} images ({v['labels_per_image']:.2f} labels/img)" for s, v in stats.items())
    )
    if args.preview:
        print(f"preview: {save_preview(out, args.preview, n=16)}")
    return 0


def run_emoji(args: argparse.Namespace) -> int:
    from sadcl.data.emoji import build_emoji
    from sadcl.data.mom30 import save_preview  # any folder of <split>.jsonl in this layout
    from sadcl.io import read_json

    out = build_emoji(
        args.out,
        min_emoji=args.min_emoji,
        fractions=args.fractions,
        vendors=args.vendors,
        skin_tones=not args.no_skin_tones,
        seed=args.seed,
    )
    meta = read_json(out / "meta.json")
    print(
        f"emoji benchmark in {out}: {meta['classes']} classes; "
        + ", ".join(
            f"{s} {v['images']} images of {v['base_emoji']} emoji ({v['labels_per_image']:.2f} labels/img)"
            for s, v in meta["stats"].items()
        )
    )
    if args.preview:
        print(f"preview: {save_preview(out, args.preview, n=16)}")
    return 0
