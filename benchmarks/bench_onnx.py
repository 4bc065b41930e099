"""ONNX Runtime vs PyTorch eager inference throughput on CPU, same model, batch and threads, in one run.

Usage:
    python benchmarks/bench_onnx.py                                  # demo-sized model (30 classes), random weights
    python benchmarks/bench_onnx.py --checkpoint runs/x/best.pt      # a trained checkpoint
    python benchmarks/bench_onnx.py --backbone resnet50 --img-size 224 --hidden-dim 512 --batch 4

PyTorch runs under ``inference_mode`` in both memory formats (contiguous and channels_last) and its faster one is the
baseline, so the ratio is not flattered by a bad layout. Every timing is the median over ``--reps`` timed batches
after ``--warmup`` untimed ones; the two engines alternate rep by rep so that background load hits both alike.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sadcl.ship.export import OnnxRunner, export_onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import channels_last_copy, command_line, interleaved_times, machine_line, update_section  # noqa: E402

logger = logging.getLogger("bench_onnx")


def _build(args: argparse.Namespace) -> tuple[torch.nn.Module, Any]:
    """The model in eval mode and its :class:`~sadcl.config.ModelConfig` (a checkpoint's, or one from the flags)."""
    if args.checkpoint:
        from sadcl.inference.open import load_model

        model, config, _ = load_model(args.checkpoint)
        return model.eval(), config.model
    from sadcl.config import ModelConfig
    from sadcl.models import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(
        backbone=args.backbone,
        pretrained=False,
        img_size=args.img_size,
        num_classes=args.num_classes,
        hidden_dim=args.hidden_dim,
        nhead=4,
        enc_layers=1,
        dec_layers=2,
        dim_feedforward=4 * args.hidden_dim,
        dropout=0.0,
        contrastive=True,
        proj_dim=args.hidden_dim,
        bank_slots=max(args.batch, 1),
    )
    return build_model(cfg).eval(), cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a trained checkpoint (default: a randomly initialised model)")
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--img-size", type=int, default=112)
    parser.add_argument("--hidden-dim", type=int, default=256)
    parser.add_argument("--num-classes", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument("--no-write", action="store_true", help="do not rewrite the `onnx` section of BENCHMARKS.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    torch.set_num_threads(args.threads)
    model, mcfg = _build(args)
    img_size = mcfg.img_size
    x = torch.randn(args.batch, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        info = export_onnx(model, path, img_size=img_size, opset=args.opset)
        runner = OnnxRunner(path, threads=args.threads)
        x_np = x.numpy()

        model_cl = channels_last_copy(model)
        x_cl = x.contiguous(memory_format=torch.channels_last)

        def run_torch() -> None:
            with torch.inference_mode():
                model(x)

        def run_torch_cl() -> None:
            with torch.inference_mode():
                model_cl(x_cl)

        def run_ort() -> None:
            runner(x_np)

        engines = {"torch": run_torch, "torch_channels_last": run_torch_cl, "onnxruntime": run_ort}
        times = interleaved_times(engines, reps=args.reps, warmup=args.warmup)

    rate = {name: args.batch / statistics.median(t) for name, t in times.items()}
    best_torch = max(("torch", "torch_channels_last"), key=rate.get)
    ratio = rate["onnxruntime"] / rate[best_torch]
    lines = [
        f"model: {args.checkpoint or 'random weights'} ({mcfg.backbone}, img {img_size}, hidden "
        f"{mcfg.hidden_dim}) | batch {args.batch} "
        f"| threads {args.threads} | reps {args.reps} (median) | torch {torch.__version__}",
        f"ONNX export: {info['exporter']} exporter, opset {info['opset']}, parity max abs diff "
        f"{info['max_abs_diff']:.2e}",
    ]
    for name, r in rate.items():
        spread = np.percentile(times[name], [25, 75]) * 1000
        lines.append(
            f"  {name:<20} {r:8.1f} images/s   (batch {1000 * statistics.median(times[name]):.1f} ms, "
            f"IQR {spread[0]:.1f}-{spread[1]:.1f} ms)"
        )
    lines.append(f"ONNX Runtime / best torch eager ({best_torch}): {ratio:.2f}x")
    print("\n".join(lines))
    if not args.no_write:
        body = "\n".join(
            [
                "## ONNX Runtime vs PyTorch eager (`benchmarks/bench_onnx.py`)",
                "",
                f"- Date and machine: {machine_line(args.threads)}",
                f"- Command: `{command_line()}`",
                "- Both engines alternate batch by batch; the ratio is against the faster PyTorch layout.",
                "",
                "```",
                *lines,
                "```",
                "",
                f"**ONNX Runtime / PyTorch eager: {ratio:.2f}x** (target >= 1.2x: "
                f"{'met' if ratio >= 1.2 else 'not met'}).",
            ]
        )
        update_section("onnx", body)


if __name__ == "__main__":
    main()
