"""SSCL + PSCL forward + backward: sadcl (only the activated label-level features) vs the dense official algorithm.

Usage:
    python benchmarks/bench_losses.py                       # COCO batch of one GPU: B=32, C=80, D=1024 (~1 minute)
    python benchmarks/bench_losses.py --batch 8 --reps 3    # smaller

The dense formulation (``tests/support/reference_losses.py``, shared with the tests) follows docs/spec.md §2.2/§2.3:
like the official ``MultiSupConLoss`` it builds the per-class ``[C, 2B, 2B]`` similarities and the full
``(2BC) x (2BC)`` similarity and mask matrices (R = 5120 at B=32, C=80), with float64 (COCO) labels promoting the
masked products to float64. Ours is ``SSCLoss(variant='official')`` + ``PSCLoss()``, which gathers the ``2 sum(y)``
activated features first (~186 rows at ~2.9 labels per image).

Measured, in one run and on the same inputs:

* the loss values (and the feature gradients) of both, which must agree;
* time: the median of ``--reps`` forward+backward repetitions, the two sides alternating rep by rep (each timed
  repetition right after an untimed one of the same side, so neither pays for the other's memory churn);
* peak memory: each side runs in its own child process (glibc mmap threshold 64 KiB, so freed buffers go back to the
  OS): after imports, inputs and one warm-up step, the peak RSS (``VmHWM``, reset there) of one forward+backward minus
  the RSS at the reset. The input gradients are included on both sides.

Results are printed as a small table; ``--json`` writes them to a file. ``bench_speed.py`` calls ``compare`` (P1).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the dense references live in tests/support
from _common import interleaved_times, machine_line, median  # noqa: E402
from support.reference_losses import dense_official_pscl, dense_official_sscl  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
LABELS_PER_IMAGE = 2.9  # COCO 2014 train: ~2.9 positive labels per image


# --------------------------------------------------------------------------------------------------- inputs
def make_inputs(batch: int, num_classes: int, dim: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The loss inputs of one official step (docs/spec.md §3.3): projected batch features ``[B, C, D]``, projected
    bank rows ``[B, C, D]`` and projected prototypes ``[C, D]`` (float32, requiring grad as proj_head outputs do), and
    float64 multi-hot labels ``[B, C]``: one random positive per image plus each other class with probability
    ``1.9 / (C - 1)``, so ~2.9 positives per image."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(batch, num_classes, dim, generator=g).requires_grad_()
    bank = torch.randn(batch, num_classes, dim, generator=g).requires_grad_()
    prototypes = torch.randn(num_classes, dim, generator=g).requires_grad_()
    labels = (torch.rand(batch, num_classes, generator=g) < (LABELS_PER_IMAGE - 1) / (num_classes - 1)).double()
    labels[torch.arange(batch), torch.randint(num_classes, (batch,), generator=g)] = 1.0
    return feats, bank, prototypes, labels


def _step(impl: str, feats: Tensor, bank: Tensor, prototypes: Tensor, labels: Tensor) -> Tensor:
    """One forward + backward of SSCL + PSCL as the official step feeds them; returns the detached loss values."""
    feats.grad = bank.grad = prototypes.grad = None
    if impl == "ours":
        from sadcl.losses import PSCLoss, SSCLoss

        sscl = SSCLoss(variant="official")([feats, bank], labels)  # as Criterion calls it (no stacked copy)
        pscl = PSCLoss()(feats, prototypes, labels)
    else:
        sscl = dense_official_sscl(torch.stack([feats, bank], dim=1), labels)
        pscl = dense_official_pscl(feats, prototypes, labels)
    (sscl + pscl).backward()
    return torch.stack([sscl.detach(), pscl.detach()])


def _grads(inputs: tuple[Tensor, ...]) -> Tensor:
    return torch.cat([t.grad.flatten() for t in inputs if t.grad is not None])


# --------------------------------------------------------------------------------------------------- memory
def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _child(impl: str, batch: int, num_classes: int, dim: int, threads: int) -> None:
    """Child process: peak RSS increase of one forward+backward after imports and inputs (printed as JSON)."""
    torch.set_num_threads(threads)
    from sadcl.losses import PSCLoss, SSCLoss  # noqa: F401  (imported before the baseline on both sides)

    inputs = make_inputs(batch, num_classes, dim)
    _step(impl, *inputs)  # warm-up: one-time lazy initialisation (kernels, thread pools) is not the loss's memory
    for t in inputs:
        t.grad = None
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (the peak RSS) to the current RSS
    base = _rss_kib("VmRSS")
    _step(impl, *inputs)
    peak = _rss_kib("VmHWM")
    grad_mib = sum(t.grad.numel() * t.grad.element_size() for t in inputs if t.grad is not None) / 2**20
    print(
        json.dumps(
            {"impl": impl, "base_kib": base, "peak_kib": peak, "delta_mib": (peak - base) / 1024, "grad_mib": grad_mib}
        )
    )


def peak_memory_mib(impl: str, *, batch: int, num_classes: int, dim: int, threads: int) -> tuple[float, float]:
    """Peak memory one forward+backward of ``impl`` adds, measured in a fresh child process.

    Returns:
        (peak increase in MiB, MiB of it that are the returned input gradients).
    """
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        # Every allocation >= 64 KiB is its own mmap, returned to the OS when freed: RSS then follows what is live
        # (glibc would otherwise keep freed warm-up buffers and hide the measured step's peak).
        "MALLOC_MMAP_THRESHOLD_": "65536",
    }
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        impl,
        "--batch",
        str(batch),
        "--num-classes",
        str(num_classes),
        "--dim",
        str(dim),
        "--threads",
        str(threads),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return float(result["delta_mib"]), float(result["grad_mib"])


# -------------------------------------------------------------------------------------------------- compare
def compare(
    *,
    batch: int = 32,
    num_classes: int = 80,
    dim: int = 1024,
    reps: int = 5,
    warmup: int = 1,
    threads: int | None = None,
) -> dict[str, Any]:
    """Ours vs dense official SSCL+PSCL: value agreement, time ratio and peak-memory ratio.

    Args:
        batch: B (images per GPU).
        num_classes: C.
        dim: Projection size D.
        reps: Timed repetitions per side (median reported).
        warmup: Untimed repetitions per side first.
        threads: torch threads (default: the current setting); the child processes use the same.

    Returns:
        ``batch, num_classes, dim, threads, positives``; the loss values and the largest value / gradient
        differences; ``ours_s, dense_s, time_ratio``; ``ours_mib, dense_mib`` (peak increase of one forward+backward),
        ``grad_mib`` (the input gradients both return), ``ours_work_mib, dense_work_mib`` (peak minus those
        gradients: the loss's working memory) and ``memory_ratio`` (of the working memories; ``memory_ratio_raw`` of
        the raw peaks).
    """
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    inputs = make_inputs(batch, num_classes, dim)
    ours = _step("ours", *inputs)
    grad_ours = _grads(inputs[:3])
    dense = _step("dense", *inputs)
    grad_dense = _grads(inputs[:3])
    diff = float((ours - dense).abs().max())
    grad_diff = float((grad_ours - grad_dense).abs().max())
    if not torch.allclose(ours, dense, rtol=1e-5, atol=1e-8) or not torch.allclose(
        grad_ours, grad_dense, rtol=1e-4, atol=1e-7
    ):
        raise AssertionError(f"ours {ours.tolist()} vs dense {dense.tolist()} (grad diff {grad_diff:.3g})")
    # settle=1: each timed step follows an untimed one of the same side, so ours (a few MiB) is not timed right after
    # the dense side has churned through ~1 GiB of fresh pages (that costs ours 2x and is not its own cost).
    times = interleaved_times(
        {"ours": lambda: _step("ours", *inputs), "dense": lambda: _step("dense", *inputs)},
        reps=reps,
        warmup=warmup,
        settle=1,
    )
    ours_s, dense_s = median(times["ours"]), median(times["dense"])
    sizes = dict(batch=batch, num_classes=num_classes, dim=dim, threads=threads)
    (ours_mib, grad_mib), (dense_mib, _) = (peak_memory_mib(impl, **sizes) for impl in ("ours", "dense"))
    ours_work, dense_work = max(ours_mib - grad_mib, 1e-3), max(dense_mib - grad_mib, 1e-3)
    return {
        **sizes,
        "positives": int(inputs[3].sum()),
        "sscl": float(ours[0]),
        "pscl": float(ours[1]),
        "max_abs_diff": diff,
        "grad_max_abs_diff": grad_diff,
        "ours_s": ours_s,
        "dense_s": dense_s,
        "time_ratio": dense_s / ours_s,
        "ours_mib": ours_mib,
        "dense_mib": dense_mib,
        "grad_mib": grad_mib,
        "ours_work_mib": ours_work,
        "dense_work_mib": dense_work,
        "memory_ratio": dense_work / ours_work,
        "memory_ratio_raw": dense_mib / max(ours_mib, 1e-3),
    }


def render(r: dict[str, Any]) -> str:
    """A small markdown table of a ``compare`` result."""
    return "\n".join(
        [
            f"SSCL (official) + PSCL, forward+backward, B={r['batch']}, C={r['num_classes']}, D={r['dim']}, "
            f"{r['positives']} positives, float32 features, float64 labels, {r['threads']} torch threads",
            f"values: SSCL {r['sscl']:.10f}, PSCL {r['pscl']:.10f}; max |ours - dense| = {r['max_abs_diff']:.2e} "
            f"(gradients {r['grad_max_abs_diff']:.2e})",
            "",
            "| | ours | dense official | ratio |",
            "|---|---|---|---|",
            f"| time (median) | {r['ours_s'] * 1e3:.2f} ms | {r['dense_s'] * 1e3:.1f} ms | {r['time_ratio']:.0f}x |",
            f"| peak memory, working (excl. the {r['grad_mib']:.0f} MiB of input gradients) "
            f"| {r['ours_work_mib']:.1f} MiB "
            f"| {r['dense_work_mib']:.0f} MiB | {r['memory_ratio']:.0f}x |",
            f"| peak memory, raw | {r['ours_mib']:.1f} MiB | {r['dense_mib']:.0f} MiB | {r['memory_ratio_raw']:.0f}x |",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=80)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default: 1; on a shared 2-core machine 2 threads make every small op "
        "wait for a descheduled OpenMP thread, which distorts the many-small-ops side)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument("--child", choices=["ours", "dense"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.batch, args.num_classes, args.dim, args.threads)
        return 0
    result = compare(
        batch=args.batch,
        num_classes=args.num_classes,
        dim=args.dim,
        reps=args.reps,
        warmup=args.warmup,
        threads=args.threads,
    )
    print(machine_line(args.threads))
    print(render(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
