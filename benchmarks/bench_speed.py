"""Speed ratios of sadcl, side by side in one run, on one machine with one thread count.

Usage:
    python benchmarks/bench_speed.py                 # the full measurement (about 10 minutes on 2 CPU cores)
    python benchmarks/bench_speed.py --quick         # a fast smoke run with tiny sizes (numbers are not meaningful)
    python benchmarks/bench_speed.py --only P1 P3    # a subset

Measured (each as a ratio, from the median of ``--reps`` timed repetitions after ``--warmup`` untimed ones; the
compared functions alternate rep by rep so that background load hits both alike):

* **P1** SSCL + PSCL as we compute them (only over positive label-level features) vs the dense official
  formulation (the full (2·B·C)² similarity matrix), B=32, C=80, D=1024: time and peak-memory ratios, from
  ``benchmarks/bench_losses.py`` (imported, not copied). Target >= 100x time and >= 50x memory.
* **P2** SADCL training step / baseline (Query2Label) training step, same backbone, batch and image size: the demo
  model of ``configs/mom30_demo.yaml`` (and, with ``--r50-train``, ResNet-50 at 224 with a small batch). A step is
  forward, criterion, backward, AdamW, OneCycleLR, EMA and (SADCL) the memory-bank update. Target <= 1.05.
* **P3** ``sadcl predict`` images/s (the Predictor from decoded PIL images: preprocessing, batching, forward,
  sigmoid) / backbone-only forward images/s on ready tensors (the limit), ResNet-50 at 224 with the default
  Query2Label head (hidden 2048, FFN 8192, 80 classes), random weights. The time is also broken down into
  preprocessing, backbone and transformer head so that our code's share is visible. Target >= 0.80.
* **P4** MOM-30 train-loader images/s (train transform, the demo config's workers) / training images/s of the demo
  model (the SADCL step of P2). Target >= 3.

Results are printed and written into the ``speed`` section of ``BENCHMARKS.md`` (``--no-write`` to skip).
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    REPO_ROOT,
    channels_last_copy,
    command_line,
    interleaved_times,
    machine_line,
    median,
    update_section,
)

logger = logging.getLogger("bench_speed")

DEMO_CONFIG = REPO_ROOT / "configs" / "mom30_demo.yaml"
TARGETS = {"P1_time": 100.0, "P1_memory": 50.0, "P2": 1.05, "P3": 0.80, "P4": 3.0}


# ----------------------------------------------------------------------------------------------------------- P1
def _bench_losses() -> ModuleType:
    """Import ``benchmarks/bench_losses.py`` as a module."""
    path = Path(__file__).resolve().parent / "bench_losses.py"
    spec = importlib.util.spec_from_file_location("bench_losses", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_losses"] = module
    spec.loader.exec_module(module)
    return module


def measure_p1(*, batch: int, num_classes: int, dim: int, reps: int, warmup: int, quick: bool) -> dict[str, Any]:
    """P1: our SSCL+PSCL vs the dense official formulation (time and peak memory), via ``bench_losses``.

    Returns:
        ``{"time_ratio", "memory_ratio", ...}`` plus whatever detail ``bench_losses`` reports.
    """
    bl = _bench_losses()
    result = bl.compare(
        batch=batch, num_classes=num_classes, dim=dim, reps=reps, warmup=warmup, threads=torch.get_num_threads()
    )
    return dict(result)


# ----------------------------------------------------------------------------------------------------------- P2
class TrainStep:
    """One training iteration of a stage: the library's parts and its one step function (``engine.train_step``).

    Args:
        model_cfg: The model configuration (``contrastive`` selects baseline vs SADCL).
        loss_cfg: The loss configuration (weights and SSCL variant).
        optim_cfg: The optimizer configuration.
        batch: Images per step.
        seed: Seed for the weights and the fixed batch.
    """

    def __init__(
        self, *, model_cfg: Any, loss_cfg: Any, optim_cfg: Any, batch: int, seed: int = 0, ema_decay: float = 0.9998
    ) -> None:
        from sadcl.losses import build_criterion
        from sadcl.models import build_model
        from sadcl.training.ema import ModelEma
        from sadcl.training.optim import build_optimizer, build_scheduler

        torch.manual_seed(seed)
        self.model = build_model(model_cfg).train()
        self.criterion = build_criterion(loss_cfg, contrastive=model_cfg.contrastive)
        self.optimizer = build_optimizer(self.model, optim_cfg)
        self.scheduler = build_scheduler(self.optimizer, optim_cfg, epochs=1, steps_per_epoch=100_000)
        self.ema = ModelEma(self.model, decay=ema_decay)
        g = torch.Generator().manual_seed(seed)
        size = model_cfg.img_size
        self.images = torch.randn(batch, 3, size, size, generator=g)
        # About 2.6 labels per image, as MOM-30.
        self.targets = (torch.rand(batch, model_cfg.num_classes, generator=g) < 2.6 / model_cfg.num_classes).float()
        self.targets[torch.arange(batch), torch.randint(model_cfg.num_classes, (batch,), generator=g)] = 1.0

    def __call__(self) -> float:
        """``sadcl.training.engine.train_step``, the step every training epoch runs (no second copy to drift)."""
        from sadcl.training.engine import train_step

        _, terms, _ = train_step(
            self.model, self.criterion, self.images, self.targets, None, self.optimizer, self.scheduler, ema=self.ema
        )
        return float(terms["loss"])


def _stage_configs(cfg: Any) -> tuple[Any, Any]:
    """(baseline model config, SADCL model config) from one run config; same backbone and sizes."""
    import dataclasses

    base = dataclasses.replace(cfg.model, contrastive=False, prototypes=None, pretrained=False)
    full = dataclasses.replace(cfg.model, contrastive=True, prototypes=None, pretrained=False)
    return base, full


def measure_p2(cfg: Any, *, batch: int, reps: int, warmup: int, label: str) -> dict[str, Any]:
    """P2: SADCL step time / baseline step time for one model configuration.

    Weights are random (``pretrained=False``): speed does not depend on their values.
    """
    import dataclasses

    base_cfg, full_cfg = _stage_configs(cfg)
    full_cfg = dataclasses.replace(full_cfg, bank_slots=batch)
    steps = {
        "baseline": TrainStep(model_cfg=base_cfg, loss_cfg=cfg.loss, optim_cfg=cfg.optim, batch=batch),
        "sadcl": TrainStep(model_cfg=full_cfg, loss_cfg=cfg.loss, optim_cfg=cfg.optim, batch=batch),
    }
    times = interleaved_times(steps, reps=reps, warmup=warmup)
    t_base, t_full = median(times["baseline"]), median(times["sadcl"])
    # Where SADCL's extra time goes: the criterion alone on the model's outputs.
    extra = _criterion_share(steps["sadcl"], reps=reps)
    return {
        "model": label,
        "backbone": cfg.model.backbone,
        "img_size": cfg.model.img_size,
        "batch": batch,
        "hidden_dim": cfg.model.hidden_dim,
        "num_classes": cfg.model.num_classes,
        "baseline_step_s": t_base,
        "sadcl_step_s": t_full,
        "ratio": t_full / t_base,
        "baseline_images_per_s": batch / t_base,
        "sadcl_images_per_s": batch / t_full,
        **extra,
    }


def _criterion_share(step: TrainStep, *, reps: int) -> dict[str, float]:
    """Forward+backward time of the contrastive terms alone (on fixed model outputs) in a SADCL step."""
    with torch.no_grad():
        out = step.model(step.images)
    out = {k: v.detach().requires_grad_(v.is_floating_point()) for k, v in out.items()}

    def contrastive_only() -> None:
        terms = step.criterion(out, step.targets)
        total = sum(step.criterion.weight_dict.get(k, 0.0) * v for k, v in terms.items() if k != "asl")
        if isinstance(total, torch.Tensor) and total.requires_grad:
            total.backward()

    t = interleaved_times({"c": contrastive_only}, reps=reps, warmup=1)["c"]
    return {"sscl_pscl_fwd_bwd_s": median(t)}


# ----------------------------------------------------------------------------------------------------------- P3
def _sample_images(n: int, size: tuple[int, int], seed: int = 0) -> list[Any]:
    """``n`` decoded RGB PIL images of ``size`` (W, H): random crops of scikit-learn's two sample photos."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        ch, cw = rng.integers(h // 2, h + 1), rng.integers(w // 2, w + 1)
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        images.append(Image.fromarray(photo[y : y + ch, x : x + cw]).resize(size, Image.BILINEAR))
    return images


def measure_p3(
    *,
    backbone: str,
    img_size: int,
    hidden_dim: int,
    num_classes: int,
    batch: int,
    reps: int,
    warmup: int,
    source_size: tuple[int, int],
) -> dict[str, Any]:
    """P3: Predictor images/s from decoded images vs backbone-only forward images/s, with a time breakdown.

    Besides the Predictor, a *reference pipeline* is timed: the same preprocessing, then the model in channels_last
    under ``inference_mode``, then sigmoid, written inline: the least a prediction pipeline of this model can cost,
    against which the Predictor's own overhead (batching, thresholds, result dicts) shows.
    """
    from sadcl.config import Config, ModelConfig
    from sadcl.models import build_model

    torch.manual_seed(0)
    model_cfg = ModelConfig(
        backbone=backbone,
        pretrained=False,
        img_size=img_size,
        num_classes=num_classes,
        hidden_dim=hidden_dim,
        dim_feedforward=4 * hidden_dim,
        contrastive=False,
    )
    config = Config(model=model_cfg)
    model = build_model(model_cfg).eval()
    class_names = [f"class_{i}" for i in range(num_classes)]
    from sadcl.inference.predict import Predictor

    # The Predictor moves its model to channels_last in place: give it a copy, so the other timings keep theirs.
    predictor = Predictor(copy.deepcopy(model), config=config, class_names=class_names, batch_size=batch, device="cpu")
    transform = predictor.transform
    images = _sample_images(batch, source_size)
    x = torch.stack([transform(im) for im in images])
    x_cl = x.contiguous(memory_format=torch.channels_last)
    backbone_cl = channels_last_copy(model.backbone)
    model_cl = channels_last_copy(model)

    def backbone_only() -> None:
        with torch.inference_mode():
            model.backbone(x)

    def backbone_only_cl() -> None:
        with torch.inference_mode():
            backbone_cl(x_cl)

    def full_model() -> None:
        with torch.inference_mode():
            model(x)

    def full_model_cl() -> None:
        with torch.inference_mode():
            model_cl(x_cl)

    def preprocess() -> None:
        torch.stack([transform(im) for im in images])

    def reference_pipeline() -> None:
        with torch.inference_mode():
            batch_x = torch.stack([transform(im) for im in images]).contiguous(memory_format=torch.channels_last)
            torch.sigmoid(model_cl(batch_x)["logits"])

    fns: dict[str, Callable[[], object]] = {"predict": lambda: predictor.predict_images(images)}
    fns.update(
        {
            "reference": reference_pipeline,
            "backbone": backbone_only,
            "backbone_cl": backbone_only_cl,
            "full_model": full_model,
            "full_model_cl": full_model_cl,
            "preprocess": preprocess,
        }
    )
    times = interleaved_times(fns, reps=reps, warmup=warmup)
    med = {k: median(v) for k, v in times.items()}
    limit_s = min(med["backbone"], med["backbone_cl"])
    full_s = min(med["full_model"], med["full_model_cl"])
    predict_s = med["predict"]
    return {
        "backbone": backbone,
        "img_size": img_size,
        "batch": batch,
        "hidden_dim": hidden_dim,
        "num_classes": num_classes,
        "source_size": list(source_size),
        "predictor": "sadcl.inference.predict.Predictor",
        "predict_images_per_s": batch / predict_s,
        "reference_images_per_s": batch / med["reference"],
        "backbone_images_per_s": batch / limit_s,
        "backbone_layout": "channels_last" if med["backbone_cl"] < med["backbone"] else "contiguous",
        "backbone_contiguous_images_per_s": batch / med["backbone"],
        "backbone_channels_last_images_per_s": batch / med["backbone_cl"],
        "full_model_images_per_s": batch / med["full_model"],
        "full_model_channels_last_images_per_s": batch / med["full_model_cl"],
        "ratio": limit_s / predict_s,
        "ratio_vs_full_model": full_s / predict_s,
        "reference_ratio": limit_s / med["reference"],
        "reference_ratio_vs_full_model": full_s / med["reference"],
        "breakdown_s_per_batch": {
            "preprocess": med["preprocess"],
            "backbone": med["backbone"],
            "backbone channels_last": med["backbone_cl"],
            "full model": med["full_model"],
            "full model channels_last": med["full_model_cl"],
            "reference pipeline": med["reference"],
            "predict total": predict_s,
        },
        "head_gflops_per_image": _head_gflops(hidden_dim, num_classes, img_size // 32),
    }


def _head_gflops(d: int, c: int, side: int) -> float:
    """Approximate GFLOPs per image of the Query2Label head (1 encoder + 2 decoder layers, FFN 4d) at ``side``²."""
    t = side * side
    enc = t * (4 * d * d + 2 * d * 4 * d) * 2 + 2 * t * t * d * 2
    dec = 2 * ((2 * c + 2 * t) * d * d + c * 2 * d * 4 * d + 2 * c * t * d) * 2
    return (enc + dec) / 1e9


# ----------------------------------------------------------------------------------------------------------- P4
def measure_p4(cfg: Any, *, batches: int, train_images_per_s: float) -> dict[str, Any]:
    """P4: MOM-30 train-loader images/s (train transform, config's workers) / demo training images/s."""
    from sadcl.data.run_loaders import loader_images_per_second

    ips = loader_images_per_second(cfg, split="train", batches=batches, train=True)
    return {
        "loader_images_per_s": ips,
        "train_images_per_s": train_images_per_s,
        "workers": cfg.data.workers,
        "batch": cfg.data.batch_size,
        "ratio": ips / train_images_per_s,
    }


# ----------------------------------------------------------------------------------------------------------- report
def _fmt(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def _verdict(name: str, value: float, *, higher_is_better: bool = True) -> str:
    target = TARGETS[name]
    if value is None or not np.isfinite(value):
        return "n/a"
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "**not met**"


def render(results: dict[str, Any], args: argparse.Namespace) -> str:
    """The markdown section for BENCHMARKS.md."""
    lines = [
        "## Speed ratios (`benchmarks/bench_speed.py`)",
        "",
        f"- Date and machine: {machine_line(args.threads)}",
        f"- Command: `{command_line()}`",
        f"- Every time is the median of {args.reps} repetitions after {args.warmup} warm-up ones; "
        "compared functions alternate rep by rep.",
        "",
    ]
    if args.quick:
        lines += ["> **Quick smoke run** (tiny sizes): these numbers only show that the script works.", ""]
    for note in getattr(args, "note", None) or []:
        lines += [f"> {note}", ""]
    lines += ["| ratio | what | measured | target | |", "|---|---|---|---|---|"]
    p1, p2s, p3, p4 = results.get("P1"), results.get("P2", []), results.get("P3"), results.get("P4")
    if isinstance(p1, dict) and "time_ratio" in p1:
        lines.append(
            f"| P1 time | SSCL+PSCL dense official / ours, B={p1.get('batch')}, C={p1.get('num_classes')}, "
            f"D={p1.get('dim')} | {_fmt(p1['time_ratio'], 1)}x | >= 100x | "
            f"{_verdict('P1_time', p1['time_ratio'])} |"
        )
        lines.append(
            f"| P1 memory | peak memory, dense official / ours | {_fmt(p1['memory_ratio'], 1)}x | >= 50x | "
            f"{_verdict('P1_memory', p1['memory_ratio'])} |"
        )
    for p2 in p2s if isinstance(p2s, list) else []:
        lines.append(
            f"| P2 ({p2['model']}) | SADCL step / baseline step, {p2['backbone']} {p2['img_size']}px, "
            f"batch {p2['batch']} ({_fmt(p2['sadcl_step_s'] * 1e3, 0)} ms vs "
            f"{_fmt(p2['baseline_step_s'] * 1e3, 0)} ms) | {_fmt(p2['ratio'], 3)} | <= 1.05 | "
            f"{_verdict('P2', p2['ratio'], higher_is_better=False)} |"
        )
    if isinstance(p3, dict) and "ratio" in p3:
        lines.append(
            f"| P3 | `sadcl predict` images/s / backbone-only forward images/s, {p3['backbone']} "
            f"{p3['img_size']}px, batch {p3['batch']} ({_fmt(p3['predict_images_per_s'], 1)} vs "
            f"{_fmt(p3['backbone_images_per_s'], 1)} img/s) | {_fmt(p3['ratio'], 3)} | >= 0.80 | "
            f"{_verdict('P3', p3['ratio'])} |"
        )
        lines.append(
            f"| P3' | `sadcl predict` / best full-model forward on ready tensors (what our code adds) | "
            f"{_fmt(p3['ratio_vs_full_model'], 3)} | (>= 0.80) | "
            f"{_verdict('P3', p3['ratio_vs_full_model'])} |"
        )
        lines.append(
            f"| P3 ref | reference pipeline (same preprocessing, channels_last, inference_mode) / backbone "
            f"({_fmt(p3['reference_images_per_s'], 1)} img/s) | {_fmt(p3['reference_ratio'], 3)} | "
            f"(>= 0.80) | {_verdict('P3', p3['reference_ratio'])} |"
        )
    if isinstance(p4, dict) and "ratio" in p4:
        lines.append(
            "| P4 | MOM-30 train loader images/s / demo SADCL training images/s "
            f"({_fmt(p4['loader_images_per_s'], 0)} vs {_fmt(p4['train_images_per_s'], 1)}; "
            f"{p4['workers']} workers) | {_fmt(p4['ratio'], 1)} | >= 3 | {_verdict('P4', p4['ratio'])} |"
        )
    for key, value in results.items():
        if isinstance(value, dict) and "error" in value:
            lines.append(f"| {key} | not measured: {value['error']} | | | |")
    if isinstance(p3, dict) and "breakdown_s_per_batch" in p3:
        bd = p3["breakdown_s_per_batch"]
        lines += [
            "",
            f"P3 breakdown, seconds per batch of {p3['batch']}: "
            + ", ".join(f"{k} {_fmt(v, 3)}" for k, v in bd.items())
            + ". "
            f"The Query2Label head (1 encoder + 2 decoder layers at d={p3['hidden_dim']}, FFN "
            f"{4 * p3['hidden_dim']}, {p3['num_classes']} label queries) costs about "
            f"{_fmt(p3['head_gflops_per_image'], 1)} GFLOPs per image, more than the ResNet-50 backbone "
            "(about 8.2 GFLOPs at 224), so no predictor of this model can reach 0.80 of the backbone-only "
            "rate; P3' and P3 ref isolate what the prediction code itself adds.",
        ]
    lines += ["", "Details (JSON):", "", "```json", json.dumps(results, indent=1, default=float), "```"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=["P1", "P2", "P3", "P4"], default=["P1", "P2", "P3", "P4"])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repetitions (a smoke run)")
    parser.add_argument("--config", default=str(DEMO_CONFIG), help="the demo config (P2, P4)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for every measurement (default: 2)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions (default 7; quick 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed repetitions first (default 2; quick 1)")
    parser.add_argument("--p3-batch", type=int, default=None, help="P3 batch size (default 16; quick 2)")
    parser.add_argument("--r50-train", action="store_true", help="also P2 with ResNet-50 at 224, batch 4 (slow)")
    parser.add_argument("--out-json", default=None, help="also write the raw results to this JSON file")
    parser.add_argument("--note", action="append", help="a remark printed above the table (repeatable)")
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.reps = args.reps or (2 if args.quick else 7)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from sadcl.config import load_config

    overrides = ["model.pretrained=false"]
    if args.quick:
        overrides += [
            "model.backbone=resnet18",
            "model.img_size=64",
            "model.hidden_dim=64",
            "model.dim_feedforward=128",
            "model.proj_dim=32",
            "data.batch_size=4",
            "data.workers=0",
            "data.options.n_train=16",
            "data.options.n_val=8",
            "data.options.n_test=8",
        ]
    results: dict[str, Any] = {}
    cfg = load_config(args.config, overrides)

    def attempt(key: str, fn: Callable[[], Any]) -> None:
        t0 = time.perf_counter()
        try:
            results[key] = fn()
        except Exception as e:  # a missing piece must not hide the other ratios
            logger.exception("%s failed", key)
            results[key] = {"error": f"{type(e).__name__}: {e}"}
        logger.info("%s done in %.1f s", key, time.perf_counter() - t0)
        gc.collect()

    if "P1" in args.only:
        attempt(
            "P1",
            lambda: measure_p1(
                batch=4 if args.quick else 32,
                num_classes=8 if args.quick else 80,
                dim=16 if args.quick else 1024,
                reps=args.reps,
                warmup=args.warmup,
                quick=args.quick,
            ),
        )
    if "P2" in args.only or "P4" in args.only:

        def p2() -> list[dict[str, Any]]:
            rows = [measure_p2(cfg, batch=cfg.data.batch_size, reps=args.reps, warmup=args.warmup, label="demo")]
            if args.r50_train and not args.quick:
                r50 = load_config(
                    None,
                    ["model.backbone=resnet50", "model.pretrained=false", "model.img_size=224", "model.num_classes=80"],
                )
                rows.append(measure_p2(r50, batch=4, reps=max(3, args.reps // 2), warmup=1, label="R50"))
            return rows

        attempt("P2", p2)
    if "P3" in args.only:
        attempt(
            "P3",
            lambda: measure_p3(
                backbone="resnet18" if args.quick else "resnet50",
                img_size=64 if args.quick else 224,
                hidden_dim=64 if args.quick else 2048,
                num_classes=8 if args.quick else 80,
                batch=args.p3_batch or (2 if args.quick else 16),
                reps=args.reps,
                warmup=args.warmup,
                source_size=(96, 72) if args.quick else (320, 240),
            ),
        )
    if "P4" in args.only:
        p2_rows = results.get("P2")
        if isinstance(p2_rows, list) and p2_rows:
            train_ips = p2_rows[0]["sadcl_images_per_s"]
            attempt("P4", lambda: measure_p4(cfg, batches=3 if args.quick else 20, train_images_per_s=train_ips))
        else:
            results["P4"] = {"error": "needs the SADCL training images/s of P2, which failed"}
    text = render(results, args)
    print(text)
    if args.out_json:
        Path(args.out_json).write_text(json.dumps(results, indent=1, default=float))
    if not args.no_write:
        update_section("speed", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
