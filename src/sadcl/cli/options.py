"""The command-line options several subcommands share, defined once so that each means the same everywhere."""

from __future__ import annotations

import argparse

__all__ = ["add_data_options", "add_device", "add_no_ema", "add_threshold", "add_thresholds_file", "weights"]


def add_device(p: argparse.ArgumentParser, *, default: str = "auto") -> None:
    """``--device``: ``auto`` (CUDA if available), ``cpu``, ``cuda``, ``cuda:1``, ..."""
    shown = "cuda if available" if default == "auto" else default
    p.add_argument("--device", default=default, help=f"cpu, cuda, cuda:1 or auto (default: {shown})")


def add_no_ema(p: argparse.ArgumentParser) -> None:
    """``--no-ema``: the regular weights instead of those the run selected on validation."""
    p.add_argument(
        "--no-ema",
        action="store_true",
        help="use the regular weights (default: the weights selected on the validation split)",
    )


def weights(args: argparse.Namespace) -> str:
    """The ``weights`` choice of :func:`sadcl.inference.open.open_model` that ``--no-ema`` asks for."""
    return "regular" if args.no_ema else "selected"


def add_threshold(p: argparse.ArgumentParser) -> None:
    """``--threshold``: one probability threshold for every class (the precedence: ``sadcl.inference.open``)."""
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="one probability threshold for every class (default: the thresholds a model directory or ONNX file "
        "ships, else 0.5)",
    )


def add_thresholds_file(p: argparse.ArgumentParser, *, help: str | None = None) -> None:
    """``--thresholds FILE``: per-class thresholds JSON from ``sadcl tune-thresholds``."""
    p.add_argument(
        "--thresholds",
        default=None,
        metavar="FILE",
        help=help or "per-class thresholds JSON from `sadcl tune-thresholds` (replaces --threshold)",
    )


def add_data_options(p: argparse.ArgumentParser, *, workers: bool = True) -> None:
    """``--data-root`` and the evaluation loader's ``--batch-size`` (and ``--workers``), defaulting to the run's."""
    p.add_argument("--data-root", default=None, help="dataset directory (default: the checkpoint's data.root)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default: data.eval_batch_size)")
    if workers:
        p.add_argument("--workers", type=int, default=None, help="loader processes (default: data.workers)")
