"""``sadcl export``: write a checkpoint's model as ONNX (image -> logits, probabilities), checked against PyTorch."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(
        name,
        help="export a checkpoint to ONNX (with a PyTorch parity check)",
        description="Export a trained model to ONNX with a dynamic batch axis. The file is written "
        "only after ONNX Runtime matches PyTorch to 1e-4 at batch sizes 1 and 3.",
    )
    p.add_argument("checkpoint", help="checkpoint file from `sadcl train`")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="export format (default: onnx)")
    p.add_argument("--out", required=True, help="output file, e.g. model.onnx")
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
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from sadcl.checkpoint import load_model
    from sadcl.data.transforms import build_eval_transform
    from sadcl.export import export_onnx

    model, config, class_names = load_model(args.checkpoint)
    transform = build_eval_transform(config)
    if args.img_size is not None and args.img_size < 1:
        raise ValueError(f"--img-size must be >= 1, got {args.img_size} (leave it out for the training size)")
    img_size = args.img_size or config.model.img_size
    metadata = {
        "mean": list(map(float, transform.mean)),
        "std": list(map(float, transform.std)),
        "backbone": config.model.backbone,
    }
    info = export_onnx(
        model,
        args.out,
        img_size=img_size,
        opset=args.opset,
        with_features=args.with_features,
        dynamic_batch=not args.static_batch,
        check=not args.no_check,
        class_names=class_names,
        metadata=metadata,
        exporter=args.exporter,
    )
    diff = "not checked" if info["max_abs_diff"] is None else f"max abs diff vs PyTorch {info['max_abs_diff']:.2e}"
    print(
        f"wrote {info['path']} ({info['bytes'] / 2**20:.1f} MB, {info['exporter']} exporter, opset {info['opset']}, "
        f"outputs {', '.join(info['outputs'])}, input [B, 3, {img_size}, {img_size}]); {diff}"
    )
    return 0
