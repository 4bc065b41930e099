"""Paper scale on a GPU (issue #31): the CUDA tests, then a short COCO-shaped run of ``configs/coco_r101_448.yaml``.

Usage:
    make gpu-check                                                # the tests, then the run below
    python benchmarks/gpu_check.py --benchmarks-md BENCHMARKS.md  # also rewrite the `gpu` section of BENCHMARKS.md
    python benchmarks/gpu_check.py --skip-tests --train-images 1024  # a longer timed run, without the tests
    python benchmarks/gpu_check.py --tiny --skip-tests            # pipeline check with a tiny model (runs on CPU too)

Without a CUDA device (and without ``--tiny``) it prints ``no CUDA device: skipped`` and exits 0.

1. ``pytest tests/test_cuda.py``: AMP fp16 (and bf16) against fp32, the loss terms in fp16, channels_last, EMA on the
   GPU, exact resume, torchrun with NCCL and SyncBatchNorm, predict / evaluate / ONNX export from CUDA.
2. Synthetic COCO-format data in a temporary directory, in the layout :mod:`sadcl.data.coco` reads
   (``annotations/instances_{train,val}2014.json``, JPEGs in ``train2014/`` and ``val2014/``; 640 x 480 images with
   about 2.9 labels each, as COCO), then :func:`sadcl.training.train.run_training` on ``configs/coco_r101_448.yaml``
   as written except: ``model.pretrained=false`` (random init: no download, the same speed), one epoch per stage,
   ``data.val_holdout`` scaled to the small split and ``data.workers`` at most the CPU count. Real model (ResNet-101 at
   448, hidden 2048), real losses (stage 1 ASL; stage 2 BCE + 100 official SSCL + 50 PSCL), AMP (fp16 with GradScaler),
   channels_last and EMA as configured, batch 32.
3. Reported per stage: training images/s in the steady state (after ``--warmup-steps`` steps; loader included, timed
   by the run's step hook), the loader's own images/s, the peak GPU memory of a training step at the config's batch;
   evaluation images/s of the stage-2 model on the test split; and the time one COCO epoch implies (train2014 has
   82 081 images; as configured, 77 081 train images after the 5 000-image holdout, which is scored twice per epoch:
   regular and EMA weights). One process on one GPU: the config's recipe uses 2 GPUs x 32.

Everything is written under ``--out`` (default: a temporary directory, removed afterwards); a committed file changes
only with ``--benchmarks-md``. The numbers go to ``OUT/gpu_check.json`` and the screen.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, command_line, machine_line, update_section  # noqa: E402

logger = logging.getLogger("gpu_check")

SKIP_LINE = "no CUDA device: skipped"
CONFIG = REPO_ROOT / "configs" / "coco_r101_448.yaml"
COCO_TRAIN2014_IMAGES = 82_081
# The 80 category ids of COCO (1..90 with gaps): the reader maps them to columns in ascending order.
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
# --tiny: the model part of tests/support/models.py's tiny run, at 64 px, batch 8, 10 classes.
TINY_OVERRIDES = [
    "model.backbone=resnet18",
    "model.hidden_dim=32",
    "model.nhead=2",
    "model.dim_feedforward=64",
    "model.proj_dim=16",
    "model.img_size=64",
    "model.bank_slots=8",
    "data.batch_size=8",
]


# ------------------------------------------------------------------------------------------------------------ data
def write_synthetic_coco(
    root: str | os.PathLike,
    *,
    n_train: int,
    n_val: int,
    image_size: tuple[int, int] = (640, 480),
    num_classes: int = 80,
    seed: int = 0,
) -> Path:
    """Write a COCO-2014-format dataset of synthetic JPEGs (the layout :func:`sadcl.data.coco.read_coco` finds).

    Each image gets ``1 + Poisson(1.9)`` labels (COCO averages 2.9), drawn with Zipf-like class frequencies (COCO's
    "person" is in about half of the images); every label is one annotation whose box is drawn in the class's colour on
    a smooth noisy background, so the JPEGs cost about what COCO's cost to decode. Categories carry COCO's ids.

    Args:
        root: The dataset directory (``data.root``); created.
        n_train: Images in ``train2014`` (the recipe holds ``data.val_holdout`` of them out for validation).
        n_val: Images in ``val2014`` (the recipe's test split).
        image_size: ``(width, height)`` of the JPEGs.
        num_classes: How many of COCO's 80 category ids to use (the first ones).
        seed: Labels and pixels are a function of it.

    Returns:
        ``root``.
    """
    from PIL import Image, ImageDraw

    if not 1 <= num_classes <= len(COCO_IDS):
        raise ValueError(f"num_classes must be in [1, {len(COCO_IDS)}], got {num_classes}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    ids = COCO_IDS[:num_classes]
    weights = 1.0 / np.arange(1, num_classes + 1) ** 0.8
    weights /= weights.sum()
    colours = (rng.random((num_classes, 3)) * 200 + 55).astype(np.uint8)
    categories = [{"id": cid, "name": f"category_{cid}", "supercategory": "synthetic"} for cid in ids]
    width, height = image_size
    for split, n in (("train2014", n_train), ("val2014", n_val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(1, n + 1):
            k = min(1 + int(rng.poisson(1.9)), num_classes)
            labels = rng.choice(num_classes, size=k, replace=False, p=weights)
            # Smooth background: coarse noise upsampled, plus fine noise (JPEG size and decode time close to COCO's).
            coarse = Image.fromarray(rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8))
            pixels = np.asarray(coarse.resize((width, height), Image.BILINEAR), dtype=np.int16)
            pixels = pixels + rng.integers(-12, 13, pixels.shape, dtype=np.int16)
            img = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
            draw = ImageDraw.Draw(img)
            for c in labels:
                w, h = int(rng.integers(width // 6, width // 2)), int(rng.integers(height // 6, height // 2))
                x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
                draw.rectangle([x, y, x + w, y + h], fill=tuple(int(v) for v in colours[c]))
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i,
                        "category_id": ids[c],
                        "bbox": [x, y, w, h],
                        "area": w * h,
                        "iscrowd": 0,
                    }
                )
            name = f"COCO_{split}_{i:012d}.jpg"
            img.save(root / split / name, quality=90)
            images.append({"id": i, "file_name": name, "width": width, "height": height})
        (root / "annotations").mkdir(exist_ok=True)
        data = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


# ----------------------------------------------------------------------------------------------------------- timing
class StepClock:
    """The run's step hook: the wall time and peak GPU memory of every optimizer step, per stage.

    The training loop reads every loss term back before it calls the hook, so the GPU has finished the step: the time
    between two calls is one whole step (loader wait, forward, backward, optimizer, EMA). The peak of the first call
    of a stage also covers what ran since the previous stage's last step (evaluations, prototypes, the build) and the
    first step's gradient-share probe (``train.grad_probe_interval``: extra backward passes every 25 steps), so it is
    reported apart from the peak of the steps after it.
    """

    def __init__(self, device: Any) -> None:
        import torch

        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.steps: dict[str, list[tuple[float, int, int]]] = defaultdict(list)

    def __call__(self, stage: str, epoch: int, done: int) -> None:
        import torch

        peak = reserved = 0
        if self.cuda:
            peak = torch.cuda.max_memory_allocated(self.device)
            reserved = torch.cuda.max_memory_reserved(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.steps[stage].append((time.perf_counter(), peak, reserved))

    def summary(self, stage: str, *, batch_size: int, warmup: int) -> dict[str, Any]:
        """``{"steps", "timed_steps", "images_per_s", "peak_allocated_gib", "peak_reserved_gib",
        "first_step_allocated_gib"}`` of one stage (peaks: None off CUDA)."""
        rows = self.steps.get(stage, [])
        timed = rows[min(warmup, max(len(rows) - 2, 0)) :]  # at least one interval when there are two steps
        ips = batch_size * (len(timed) - 1) / (timed[-1][0] - timed[0][0]) if len(timed) >= 2 else math.nan
        steady = rows[1:] or rows
        return {
            "steps": len(rows),
            "timed_steps": max(len(timed) - 1, 0),
            "images_per_s": ips,
            "peak_allocated_gib": max((r[1] for r in steady), default=0) / 2**30 if self.cuda else None,
            "peak_reserved_gib": max((r[2] for r in steady), default=0) / 2**30 if self.cuda else None,
            "first_step_allocated_gib": rows[0][1] / 2**30 if self.cuda and rows else None,
        }


def eval_throughput(cfg: Any, checkpoint: Path, device: Any) -> dict[str, Any]:
    """Images/s of ``sadcl evaluate``'s loop (:func:`sadcl.training.engine.evaluate`, AMP as the run) on the test split.

    The second of two passes is timed (the first starts the loader workers and the convolution algorithms).
    """
    import torch

    from sadcl.data import build_dataset, build_loader
    from sadcl.data.transforms import build_eval_transform
    from sadcl.inference.open import load_model
    from sadcl.training.engine import evaluate, place_model

    device = torch.device(device)
    model, _, class_names = load_model(checkpoint, map_location="cpu")
    place_model(model, device=device, channels_last=cfg.train.channels_last)
    dataset = build_dataset(cfg.data, cfg.data.test_split, build_eval_transform(cfg), class_names=class_names)
    batch_size = cfg.data.eval_batch_size or cfg.data.batch_size
    loader = build_loader(dataset, batch_size=batch_size, workers=cfg.data.workers)
    evaluate(model, loader, device=device, amp=cfg.train.amp)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    result = evaluate(model, loader, device=device, amp=cfg.train.amp)  # returns CPU tensors: the GPU is done
    seconds = time.perf_counter() - start
    return {
        "images": len(dataset),
        "batch_size": batch_size,
        "images_per_s": len(dataset) / seconds,
        "mAP": float(result["mAP"]),
        "peak_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


# -------------------------------------------------------------------------------------------------------------- run
def run_tests(extra: list[str]) -> dict[str, Any]:
    """``pytest tests/test_cuda.py`` in a subprocess; its output goes to the screen, its summary line is kept."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_cuda.py", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    print("$ " + " ".join(["python", *cmd[1:]]), flush=True)
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    print(proc.stdout, end="", flush=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    return {"returncode": proc.returncode, "summary": lines[-1].strip("= ") if lines else ""}


def device_info(device: Any) -> dict[str, Any]:
    """The GPU's name and memory, and the CUDA / cuDNN versions torch was built with (CPU: just ``cpu``)."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return {"name": "cpu"}
    props = torch.cuda.get_device_properties(device)
    return {
        "name": props.name,
        "memory_gib": props.total_memory / 2**30,
        "count": torch.cuda.device_count(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "bf16": torch.cuda.is_bf16_supported(),
    }


def run_check(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Write the data, train both stages, time them and the evaluation; the numbers as a dict."""
    import torch

    from sadcl.checkpoint import load_checkpoint
    from sadcl.config import load_config
    from sadcl.data.run_loaders import loader_images_per_second
    from sadcl.distributed import resolve_device
    from sadcl.training.train import run_training, stage_config

    written = load_config(args.config)  # the recipe as written: its holdout and epochs give the implied times
    num_classes = 10 if args.tiny else written.model.num_classes
    size = (80, 64) if args.tiny else tuple(args.image_size)
    root = out / "coco"
    print(f"writing {args.train_images} + {args.test_images} synthetic COCO images ({size[0]} x {size[1]}) to {root}")
    t0 = time.perf_counter()
    write_synthetic_coco(
        root, n_train=args.train_images, n_val=args.test_images, image_size=size, num_classes=num_classes
    )
    data_seconds = time.perf_counter() - t0
    overrides = [
        f"data.root={root}",
        f"train.output_dir={out / 'run'}",
        "model.pretrained=false",
        "model.pretrained_file=null",
        f"model.num_classes={num_classes}",
        f"data.val_holdout={args.holdout}",
        f"data.workers={min(written.data.workers, os.cpu_count() or 1)}",
        "train.baseline_epochs=1",
        "train.epochs=1",
        "train.progress=false",
        *(TINY_OVERRIDES if args.tiny else []),
        *args.set,
    ]
    cfg = load_config(args.config, overrides)
    clock = StepClock(resolve_device(cfg.train.device))
    result: dict[str, Any] = {
        "config": str(Path(args.config).resolve().relative_to(REPO_ROOT))
        if Path(args.config).resolve().is_relative_to(REPO_ROOT)
        else str(args.config),
        "overrides": overrides[2:],  # not the temporary paths
        "tiny": args.tiny,
        "device": device_info(clock.device),
        "data": {
            "train_images": args.train_images - args.holdout,
            "holdout_images": args.holdout,
            "test_images": args.test_images,
            "image_size": list(size),
            "num_classes": num_classes,
            "seconds_to_write": data_seconds,
        },
        "batch_size": cfg.data.batch_size,
        "amp": cfg.train.amp and clock.cuda,  # autocast runs on CUDA only
        "channels_last": cfg.train.channels_last,
        "stages": {},
    }
    print(
        f"training {cfg.model.backbone} at {cfg.model.img_size} px, batch {cfg.data.batch_size}, amp={result['amp']}, "
        f"on {result['device']['name']}: one epoch per stage"
    )
    t0 = time.perf_counter()
    try:
        results = run_training(cfg, hook=clock)
    except torch.cuda.OutOfMemoryError as e:
        result["error"] = f"CUDA out of memory at batch {cfg.data.batch_size}: {str(e).splitlines()[0]}"
        return result
    result["run_seconds"] = time.perf_counter() - t0
    run_dir = Path(cfg.train.output_dir)
    for stage in ("baseline", "sadcl"):
        summary = clock.summary(stage, batch_size=cfg.data.batch_size, warmup=args.warmup_steps)
        summary["epoch_images_per_s"] = results.get(stage, {}).get("train_images_per_s")  # whole epoch, warm-up too
        summary["test_mAP"] = results.get(stage, {}).get("test", {}).get("mAP")
        last = load_checkpoint(run_dir / stage / "last.pt")
        summary["grad_scaler_scale"] = (last.get("scaler") or {}).get("scale")  # None: no GradScaler (no AMP)
        summary["loader_images_per_s"] = loader_images_per_second(
            stage_config(cfg, stage), batches=max(1, summary["steps"] - 2)
        )
        result["stages"][stage] = summary
    result["eval"] = eval_throughput(cfg, run_dir / "sadcl" / "best.pt", clock.device)
    result["implied"] = implied_times(result, written)
    return result


def implied_times(result: dict[str, Any], written: Any) -> dict[str, Any]:
    """Minutes per COCO epoch at the measured speeds (one GPU), and the recipe's upper bound in hours."""
    holdout = written.data.val_holdout or 0
    holdout = int(holdout if holdout >= 1 else round(holdout * COCO_TRAIN2014_IMAGES))
    eval_ips = result["eval"]["images_per_s"]
    out: dict[str, Any] = {"coco_train2014_images": COCO_TRAIN2014_IMAGES, "holdout": holdout}
    total_hours = 0.0
    for stage, epochs in (
        ("baseline", written.train.baseline_epochs or written.train.epochs),
        ("sadcl", written.train.epochs),
    ):
        ips = result["stages"][stage]["images_per_s"]
        pass_min = COCO_TRAIN2014_IMAGES / ips / 60
        epoch_min = ((COCO_TRAIN2014_IMAGES - holdout) / ips + 2 * holdout / eval_ips) / 60
        out[stage] = {"pass_minutes": pass_min, "epoch_minutes": epoch_min, "epochs": epochs}
        total_hours += epochs * epoch_min / 60
    out["recipe_hours_at_most"] = total_hours  # early stopping (patience 8) usually ends both stages sooner
    out["test_minutes"] = 40_504 / eval_ips / 60  # val2014, the recipe's test split, scored once per stage
    return out


# ----------------------------------------------------------------------------------------------------------- report
def _f(x: Any, fmt: str = ".0f") -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def _n(x: int) -> str:
    """``77081`` -> ``77 081``, as the rest of BENCHMARKS.md writes counts."""
    return f"{x:,}".replace(",", " ")


def render(result: dict[str, Any], tests: dict[str, Any] | None) -> str:
    """The ``gpu`` section of BENCHMARKS.md (markdown, heading included)."""
    dev = result["device"]
    lines = [
        "## Paper scale on a GPU (`benchmarks/gpu_check.py`)",
        "",
        f"{machine_line()}; GPU: {dev['name']}"
        + (
            f" ({dev['memory_gib']:.0f} GiB, {dev['count']} visible), CUDA {dev['cuda']}, cuDNN {dev['cudnn']}"
            if "cuda" in dev
            else ""
        )
        + f". Command: `{command_line()}` (what `make gpu-check` runs).",
        "",
    ]
    if tests is not None:
        lines += [
            f"CUDA tests (`tests/test_cuda.py`): {tests['summary'] or 'no summary'} (exit code {tests['returncode']}).",
            "",
        ]
    d = result["data"]
    lines += [
        f"Run: `{result['config']}` with {' '.join(f'`{o}`' for o in result['overrides'])}, on synthetic COCO-format "
        f"data ({d['train_images']} train + {d['holdout_images']} held-out val images, {d['test_images']} test images, "
        f"{d['image_size'][0]} x {d['image_size'][1]} JPEG, {d['num_classes']} classes); batch {result['batch_size']}, "
        f"AMP {'fp16 + GradScaler' if result['amp'] else 'off'}, channels_last {result['channels_last']}, one process "
        "on one GPU (the recipe's 2 GPUs x 32 would each see these speeds, less the gradient all-reduce).",
        "",
    ]
    if "error" in result:
        return "\n".join([*lines, f"**Failed:** {result['error']}"])
    imp = result["implied"]
    lines += [
        "| stage | train images/s (steady, loader included) | loader alone images/s | peak GPU memory of a step "
        "(allocated / reserved; first step) | final GradScaler scale | pass over train2014 (82 081 images) "
        "| one epoch as configured |",
        "|---|---|---|---|---|---|---|",
    ]
    for stage, name in (("baseline", "1: baseline (ASL)"), ("sadcl", "2: SADCL (BCE + SSCL + PSCL)")):
        s = result["stages"][stage]
        lines.append(
            f"| {name} | {_f(s['images_per_s'], '.1f')} ({s['timed_steps']} steps) "
            f"| {_f(s['loader_images_per_s'], '.0f')} "
            f"| {_f(s['peak_allocated_gib'], '.1f')} / {_f(s['peak_reserved_gib'], '.1f')} GiB; "
            f"{_f(s['first_step_allocated_gib'], '.1f')} GiB "
            f"| {_f(s['grad_scaler_scale'], '.0f')} | {_f(imp[stage]['pass_minutes'], '.1f')} min "
            f"| {_f(imp[stage]['epoch_minutes'], '.1f')} min |"
        )
    e = result["eval"]
    lines += [
        "",
        f"Evaluation (`sadcl.training.engine.evaluate`, batch {e['batch_size']}, AMP as the run, loader included): "
        f"{_f(e['images_per_s'], '.1f')} images/s, peak {_f(e['peak_allocated_gib'], '.1f')} GiB allocated. "
        "\"First step\": the peak since the previous stage's last step, the first step's gradient-share probe "
        "(`train.grad_probe_interval`, every 25 steps) included. "
        f'"One epoch as configured" = {_n(imp["coco_train2014_images"] - imp["holdout"])} training images + the '
        f"{_n(imp['holdout'])}-image holdout scored twice (regular and EMA weights). The recipe's "
        f"{imp['baseline']['epochs']} + {imp['sadcl']['epochs']} epochs would take at most "
        f"{_f(imp['recipe_hours_at_most'], '.1f')} h on this GPU (early stopping usually ends both stages sooner), "
        f"plus {_f(imp['test_minutes'], '.1f')} min per stage for the 40 504 test images. Random weights and "
        "synthetic labels: the mAP values of this run mean nothing.",
    ]
    return "\n".join(lines)


def print_summary(result: dict[str, Any]) -> None:
    if "error" in result:
        print(f"gpu-check: FAILED: {result['error']}")
        return
    for stage, s in result["stages"].items():
        imp = result["implied"][stage]
        print(
            f"{stage:<9} train {s['images_per_s']:7.1f} images/s (loader alone {s['loader_images_per_s']:.0f}), "
            f"peak {_f(s['peak_allocated_gib'], '.1f')} GiB, COCO epoch {imp['epoch_minutes']:.1f} min"
        )
    e = result["eval"]
    print(f"eval      {e['images_per_s']:7.1f} images/s, peak {_f(e['peak_allocated_gib'], '.1f')} GiB")
    print(f"recipe    at most {result['implied']['recipe_hours_at_most']:.1f} h on this GPU")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(CONFIG), help="the recipe (default: configs/coco_r101_448.yaml)")
    parser.add_argument("--train-images", type=int, default=None, help="train2014 images, holdout included (448)")
    parser.add_argument("--holdout", type=int, default=None, help="of them held out for validation (64)")
    parser.add_argument("--test-images", type=int, default=None, help="val2014 images (the test split; 256)")
    parser.add_argument("--image-size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"))
    parser.add_argument("--warmup-steps", type=int, default=None, help="untimed steps per stage (3)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more config overrides")
    parser.add_argument("--skip-tests", action="store_true", help="leave out pytest tests/test_cuda.py")
    parser.add_argument("--tiny", action="store_true", help="tiny model and data: a pipeline check (CPU too)")
    parser.add_argument("--out", default=None, help="keep everything in this directory (default: a temporary one)")
    parser.add_argument("--benchmarks-md", default=None, help="rewrite the `gpu` section of this file")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available() and not args.tiny:
        print(SKIP_LINE)
        return 0
    if args.tiny and args.benchmarks_md:
        parser.error("--tiny numbers mean nothing: no --benchmarks-md with it")
    defaults = (64, 16, 16, 1) if args.tiny else (448, 64, 256, 3)
    for name, value in zip(("train_images", "holdout", "test_images", "warmup_steps"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, value)
    if not 1 <= args.holdout < args.train_images:
        parser.error("--holdout must be >= 1 and smaller than --train-images")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    tests = None if args.skip_tests else run_tests([])
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="sadcl_gpu_check_"))
    out.mkdir(parents=True, exist_ok=True)
    try:
        result = run_check(args, out)
        result["tests"] = tests
        (out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        print_summary(result)
        if args.benchmarks_md:
            update_section("gpu", render(result, tests), Path(args.benchmarks_md))
            print(f"wrote the `gpu` section of {args.benchmarks_md}")
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
        else:
            print(f"kept {out} (gpu_check.json, the synthetic data and the run)")
    failed = "error" in result or (tests is not None and tests["returncode"] != 0)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
