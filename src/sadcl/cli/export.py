"""``sadcl export``: a checkpoint as a model directory, or as ONNX (fp32 or int8) checked against PyTorch."""

from __future__ import annotations

import argparse
import dataclasses


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(
        name,
        help="export a checkpoint as a model directory or ONNX (fp32 / int8)",
        description="--format dir writes a model directory (model.safetensors, config.json, classes.txt, "
        "thresholds.json, README.md model card). --format onnx writes an ONNX model with a dynamic batch axis, "
        "written only after ONNX Runtime matches PyTorch to 1e-4 at batch sizes 1 and 3; its metadata carries the "
        "class names, thresholds, preprocessing and the sigmoid rule. --quantize int8 adds an int8 file.",
    )
    p.add_argument("checkpoint", help="checkpoint file from `sadcl train`, or a model directory")
    p.add_argument("--format", choices=["onnx", "dir"], default="onnx", help="export format (default: onnx)")
    p.add_argument("--out", required=True, help="output: model.onnx, or the directory for --format dir")
    p.add_argument(
        "--thresholds",
        default=None,
        metavar="FILE",
        help="per-class thresholds from `sadcl tune-thresholds` (default: the model directory's, else 0.5)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="--format dir: write into a non-empty directory that is not a sadcl model directory (the five model "
        "files replace files of the same names; nothing else is touched)",
    )
    p.add_argument("--with-features", action="store_true", help="also output the label-level features [B, C, d]")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default: 18)")
    p.add_argument("--img-size", type=int, default=None, help="input size (default: the training size)")
    p.add_argument("--static-batch", action="store_true", help="fix the batch size to 2 instead of a dynamic axis")
    p.add_argument(
        "--exporter",
        choices=["auto", "dynamo", "torchscript"],
        default="auto",
        help="torch ONNX exporter (default: dynamo, falling back to TorchScript)",
    )
    p.add_argument("--no-check", action="store_true", help="skip the checker and the parity check")
    p.add_argument("--quantize", choices=["int8"], default=None, help="also write an int8 model (OUT.int8.onnx)")
    p.add_argument(
        "--quantize-mode",
        choices=["dynamic", "static"],
        default="dynamic",
        help="dynamic: weights int8, no data (default; kept mAP on the demo); static: activations calibrated on "
        "training images (faster on dense-conv backbones, may cost accuracy: BENCHMARKS.md int8)",
    )
    p.add_argument("--calibration-images", type=int, default=64, help="training images for static calibration")
    p.add_argument("--data-root", default=None, help="dataset directory for calibration (default: the run's)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sadcl.inference.open import open_model
    from sadcl.ship.model_dir import export_model_dir

    if args.format == "dir":
        onnx_only = [
            f for f, given in (("--quantize", args.quantize), ("--with-features", args.with_features)) if given
        ]
        if onnx_only:
            raise ValueError(f"{', '.join(onnx_only)}: only with --format onnx")
    trained = open_model(args.checkpoint, thresholds=args.thresholds)
    model, config, class_names = trained.torch_model("sadcl export"), trained.config, trained.class_names
    if args.format == "dir":
        out = export_model_dir(trained, args.out, overwrite=args.overwrite)
        print(f"wrote model directory {out} (model.safetensors, config.json, classes.txt, thresholds.json, README.md)")
        return 0

    from sadcl.ship.artifact import onnx_metadata
    from sadcl.ship.export import export_onnx

    if args.img_size is not None and args.img_size < 1:
        raise ValueError(f"--img-size must be >= 1, got {args.img_size} (leave it out for the training size)")
    img_size = args.img_size or config.model.img_size
    names = class_names or [f"class_{i}" for i in range(config.model.num_classes)]
    metadata = onnx_metadata(config, names, trained.thresholds)
    if img_size != config.model.img_size:
        metadata["preprocessing"]["img_size"] = [img_size, img_size]
    info = export_onnx(
        model,
        args.out,
        img_size=img_size,
        opset=args.opset,
        with_features=args.with_features,
        dynamic_batch=not args.static_batch,
        check=not args.no_check,
        class_names=class_names or None,
        metadata=metadata,
        exporter=args.exporter,
    )
    diff = "not checked" if info["max_abs_diff"] is None else f"max abs diff vs PyTorch {info['max_abs_diff']:.2e}"
    print(
        f"wrote {info['path']} ({info['bytes'] / 2**20:.1f} MB, {info['exporter']} exporter, opset {info['opset']}, "
        f"outputs {', '.join(info['outputs'])}, input [B, 3, {img_size}, {img_size}]); {diff}"
    )
    if args.quantize:
        from sadcl.ship.quantize import calibration_batches, quantize_onnx

        calibration = None
        if args.quantize_mode == "static":
            if args.data_root is not None:
                config = dataclasses.replace(config, data=dataclasses.replace(config.data, root=args.data_root))
            calibration = calibration_batches(config, num_images=args.calibration_images)
        out = Path(args.out)
        q = quantize_onnx(out, out.with_suffix(".int8.onnx"), mode=args.quantize_mode, calibration=calibration)
        print(f"wrote {q['path']} ({q['bytes'] / 2**20:.1f} MB, int8 {q['mode']})")
    return 0
