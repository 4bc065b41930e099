"""``sadcl predict``: labels for image files, from a checkpoint (PyTorch) or an exported ONNX model."""

from __future__ import annotations

import argparse
import sys

from sadcl.cli.options import add_device, add_no_ema, add_threshold, add_thresholds_file


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(
        name,
        help="predict labels for images (files, directories, globs)",
        description="Predict the labels of images with a checkpoint (torch engine) or an ONNX file "
        "from `sadcl export` (onnxruntime engine). A label is predicted when its "
        "probability is above its threshold; --top-k keeps at most K of those, best first. "
        "Directories are searched recursively for image files.",
    )
    p.add_argument(
        "model", metavar="MODEL", help="checkpoint (.pt), model directory (`sadcl export --format dir`) or ONNX model"
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, directories or glob patterns")
    p.add_argument(
        "--engine",
        choices=["torch", "onnxruntime"],
        default=None,
        help="inference engine (default: onnxruntime for .onnx, torch otherwise)",
    )
    add_threshold(p)
    add_thresholds_file(p)
    p.add_argument("--top-k", type=int, default=None, metavar="K", help="keep at most K labels per image")
    p.add_argument("--all-scores", action="store_true", help="also write every class's probability (JSON only)")
    p.add_argument(
        "--format",
        choices=["json", "csv"],
        default=None,
        help="output format (default: from the --out extension, else json)",
    )
    p.add_argument("--out", default="-", help="output file (default: stdout)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward (default: 32)")
    p.add_argument("--workers", type=int, default=2, help="image-decoding processes (default: 2)")
    add_device(p)
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: all cores)")
    p.add_argument("--no-amp", action="store_true", help="no float16 autocast on CUDA")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images instead of stopping")
    add_no_ema(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from sadcl.inference.predict import Predictor, default_engine, expand_inputs, write_csv, write_json

    paths = expand_inputs(args.inputs)  # before loading the model: a typo in a path fails fast
    fmt = args.format or ("csv" if str(args.out).lower().endswith(".csv") else "json")
    if args.all_scores and fmt != "json":
        raise ValueError("--all-scores: only with --format json (a CSV row holds the selected labels only)")
    engine = args.engine or default_engine(args.model)
    common = {
        "threshold": args.threshold,
        "thresholds_file": args.thresholds,
        "top_k": args.top_k,
        "batch_size": args.batch_size,
        "workers": args.workers,
    }
    only_for = {
        "torch": [
            ("--no-ema", args.no_ema),
            ("--no-amp", args.no_amp),
            (f"--device {args.device}", args.device not in ("auto", "cpu")),
        ],
        "onnxruntime": [("--threads", args.threads is not None)],
    }
    other = "onnxruntime" if engine == "torch" else "torch"
    wrong = [flag for flag, given in only_for[other] if given]
    if wrong:  # an option the chosen engine cannot honour is an error, not silently ignored
        raise ValueError(f"{', '.join(wrong)}: only for the {other} engine (this run uses {engine})")
    if engine == "torch":
        predictor = Predictor.from_path(
            args.model,
            engine=engine,
            device=args.device,
            use_ema=False if args.no_ema else None,
            amp=not args.no_amp,
            **common,
        )
    else:
        predictor = Predictor.from_path(args.model, engine=engine, threads=args.threads, **common)
    skipped: list[str] = []
    results = predictor.predict_images(
        paths,
        skip_bad=args.skip_bad,
        all_scores=args.all_scores,
        skipped=skipped,
        progress=sys.stderr.isatty() and len(paths) > predictor.batch_size,
    )
    (write_csv if fmt == "csv" else write_json)(results, args.out)
    if skipped:
        print(f"sadcl predict: skipped {len(skipped)} unreadable image(s) of {len(paths)}", file=sys.stderr)
    if args.out != "-":
        n_labels = sum(len(r["labels"]) for r in results)
        print(f"wrote {len(results)} predictions ({n_labels} labels) to {args.out}", file=sys.stderr)
    return 0
