"""The SADCL ablation on MOM-30: baseline (SARL only), +SSCL, +PSCL and full SADCL, several seeds, one command.

Usage:
    python benchmarks/ablation.py                                   # defaults: about 2 hours on 2 CPU cores
        (3 seeds; MOM-30 2000/500/1000 images; 3 + 3 epochs; EMA decay 0.99; prototype threshold 0.5)
    python benchmarks/ablation.py --seeds 0 1 --epochs 2 --n-train 2000   # smaller
    python benchmarks/ablation.py --report-only                     # only rebuild tables/figures from finished runs
    python benchmarks/ablation.py --quick --out /tmp/abl            # a smoke run with tiny sizes (not meaningful)

Protocol (per seed):

1. Stage 1 trains the Query2Label baseline ("SARL only") once; prototypes are built from its selected checkpoint
   once. Every stage-2 variant of that seed starts from this checkpoint and these prototypes, so stage 1 is shared.
2. Stage 2 trains each variant for the same epochs with the same schedule:

   ========================  ==============  ==============  =============
   row                       weight_sscl     weight_pscl     SSCL variant
   ========================  ==============  ==============  =============
   baseline (SARL only)      0               0               -
   +SSCL                     100             0               paper
   +PSCL                     0               50              paper
   SADCL                     100             50              paper
   SADCL (official SSCL)     100             50              official
   ========================  ==============  ==============  =============

   The baseline row therefore gets the same total budget as SADCL (stage 1 + a stage 2 with ASL only), so the
   comparison measures the contrastive terms, not extra epochs. The "stage 1 only" row (half the budget) is shown for
   reference.
3. Model selection (best epoch, EMA or regular) uses the validation split; the selected checkpoint is evaluated once
   on the test split: mAP, CF1 and OF1 (threshold 0.5). Tables give mean ± sample std over the seeds that finished.

The run is resumable: a finished run leaves ``result.json`` in its directory and is skipped next time (delete the
file to redo it). Tasks run in priority order (all seeds' baseline and SADCL first, then the other rows), so a run cut
short still gives the main comparison. Outputs: the ``ablation`` section of ``BENCHMARKS.md``, the bar chart
``benchmarks/ablation.png``, and the t-SNE figure ``benchmarks/embeddings_tsne.png`` (2 000 label-level features of
MOM-30 test images, baseline vs SADCL, seed of the first finished pair, coloured by class).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, STANDIN_DEMO, command_line, machine_line, update_section  # noqa: E402

logger = logging.getLogger("ablation")

DEMO_CONFIG = REPO_ROOT / "configs" / "mom30_demo.yaml"
CHART = REPO_ROOT / "benchmarks" / "ablation.png"
TSNE = REPO_ROOT / "benchmarks" / "embeddings_tsne.png"
METRICS = ("mAP", "CF1", "OF1")


@dataclass(frozen=True)
class Variant:
    """One stage-2 row of the ablation."""

    key: str
    title: str
    weight_sscl: float
    weight_pscl: float
    sscl_variant: str = "paper"


VARIANTS = (
    Variant("baseline", "baseline (SARL only, same budget)", 0.0, 0.0),
    Variant("sadcl", "SADCL (SSCL+PSCL)", 100.0, 50.0),
    Variant("sscl", "+SSCL", 100.0, 0.0),
    Variant("pscl", "+PSCL", 0.0, 50.0),
    Variant("sadcl_official", "SADCL, official SSCL", 100.0, 50.0, "official"),
)
ROW_ORDER = ("stage1", "baseline", "sscl", "pscl", "sadcl", "sadcl_official")
ROW_TITLES = {"stage1": "stage 1 only (half budget)", **{v.key: v.title for v in VARIANTS}}
SHORT_TITLES = {"stage1": "stage 1\nonly", "baseline": "baseline\n(SARL only)", "sscl": "+SSCL", "pscl": "+PSCL",
                "sadcl": "SADCL", "sadcl_official": "SADCL\n(official SSCL)"}
PRIMARY = ("baseline", "sadcl")


# ----------------------------------------------------------------------------------------------------------- config
def base_overrides(args: argparse.Namespace) -> list[str]:
    """Config overrides shared by every run of the ablation (sizes, epochs)."""
    ov = [f"data.options.n_train={args.n_train}", f"data.options.n_val={args.n_val}",
          f"data.options.n_test={args.n_test}", "data.options.workers=2", "data.options.progress=false",
          f"train.epochs={args.epochs}",
          f"train.baseline_epochs={args.baseline_epochs or args.epochs}", "train.progress=false",
          *([f"train.ema_decay={args.ema_decay}"] if args.ema_decay is not None else []),
          *([f"train.prototype_threshold={args.prototype_threshold}"] if args.prototype_threshold else []),
          "train.tensorboard=false", "train.early_stop_patience=null"]
    if args.img_size:
        ov += [f"model.img_size={args.img_size}", f"data.options.size={args.img_size}"]
    if args.data_root:
        ov.append(f"data.root={args.data_root}")
    if args.max_steps:
        ov.append(f"train.max_steps_per_epoch={args.max_steps}")
    if args.quick:
        ov += ["model.backbone=resnet18", "model.pretrained=false", "model.hidden_dim=32", "model.dim_feedforward=64",
               "model.proj_dim=16", "data.batch_size=8", "data.workers=0", "train.log_interval=1"]
    return ov + list(args.set or [])


def run_config(args: argparse.Namespace, seed: int, run_dir: Path, extra: list[str] | None = None) -> Any:
    """The full :class:`~sadcl.config.Config` of one run."""
    from sadcl.config import load_config

    ov = [*base_overrides(args), f"train.seed={seed}", f"train.output_dir={run_dir}", *(extra or [])]
    if not Path(args.config).is_file():
        from sadcl.models import fetch_efficientnet_lite0

        logger.warning("%s does not exist: using the stand-in demo configuration", args.config)
        weights = [] if args.quick else [f"model.pretrained_file={fetch_efficientnet_lite0()}"]
        return load_config(None, [*STANDIN_DEMO, *weights, *ov])
    return load_config(args.config, ov)


def variant_overrides(v: Variant) -> list[str]:
    """Loss overrides of a stage-2 variant."""
    return [f"loss.weight_sscl={v.weight_sscl}", f"loss.weight_pscl={v.weight_pscl}",
            f"loss.sscl_variant={v.sscl_variant}"]


# ----------------------------------------------------------------------------------------------------------- runs
def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    tmp.replace(path)


def evaluate_checkpoint(checkpoint: Path, cfg: Any, split: str, batch_size: int) -> dict[str, float]:
    """mAP / CF1 / OF1 (and the other scalars of ``summarize``) of a checkpoint on a split, threshold 0.5."""
    from sadcl.checkpoint import load_model
    from sadcl.data import build_dataset, build_loader
    from sadcl.engine import evaluate
    from sadcl.visualize import eval_transform

    model, ckpt_cfg, _ = load_model(checkpoint)
    dataset = build_dataset(cfg.data, split, eval_transform(ckpt_cfg))
    loader = build_loader(dataset, batch_size=batch_size, shuffle=False, workers=0)
    result = evaluate(model, loader, device="cpu")
    return {k: float(v) for k, v in result.items() if isinstance(v, (int, float, np.floating))}


def _selected_checkpoint(stage_dir: Path) -> Path:
    for name in ("best.pt", "checkpoint_best.pt", "last.pt"):
        if (stage_dir / name).is_file():
            return stage_dir / name
    raise FileNotFoundError(f"no checkpoint in {stage_dir}")


def _checkpoint_info(path: Path) -> dict[str, Any]:
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return {"epoch": ckpt.get("epoch"), "val_metrics": ckpt.get("metrics", {})}


_ENGINE_NOTE = ("`sadcl.train` did not exist yet, so each stage ran through `engine_stage` in this script: the "
                "library's `engine.train_one_epoch`/`evaluate`, `build_optimizer`, `build_scheduler` (OneCycle), "
                "`ModelEma`, `prototypes.compute_prototypes`; after every epoch the regular and the EMA model are "
                "scored on val and the best is kept")


def _has_run_training() -> bool:
    try:
        from sadcl.train import run_training  # noqa: F401
    except ImportError:
        return False
    return True


def engine_stage(cfg: Any, stage: str, stage_dir: Path, *, init: Path | None = None,
                 prototypes: Path | None = None) -> Path:
    """Train one stage with the library's parts (``sadcl.engine`` loops, optimizer, schedule, EMA, checkpoint).

    Used when ``sadcl.train.run_training`` is not available. Selection: after every epoch both the regular and the
    EMA model are scored on val; the best one is saved as ``stage_dir/best.pt`` (its weights under ``model``).

    Args:
        cfg: The run configuration.
        stage: ``baseline`` (stage 1, ASL only) or ``sadcl`` (stage 2, the configured loss weights).
        stage_dir: Output directory.
        init: Stage-1 checkpoint to start stage 2 from.
        prototypes: ``.npy`` prototypes for stage 2.

    Returns:
        The selected checkpoint.
    """
    import dataclasses

    import torch

    from sadcl.checkpoint import save_checkpoint
    from sadcl.data import build_dataset, build_loader
    from sadcl.data.transforms import build_transforms
    from sadcl.ema import ModelEma
    from sadcl.engine import evaluate, train_one_epoch
    from sadcl.losses import build_criterion
    from sadcl.models import build_model
    from sadcl.optim import build_optimizer, build_scheduler

    contrastive = stage == "sadcl"
    torch.manual_seed(cfg.train.seed + (1000 if contrastive else 0))
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, contrastive=contrastive, prototypes=None))
    model = build_model(cfg.model)
    if init is not None:
        model.load_baseline_state_dict(init)
    if prototypes is not None:
        model.load_prototypes(prototypes)
    loss_cfg = cfg.loss
    if not contrastive and cfg.train.baseline_gamma_neg is not None:
        loss_cfg = dataclasses.replace(loss_cfg, gamma_neg=cfg.train.baseline_gamma_neg)
    criterion = build_criterion(loss_cfg, contrastive=contrastive)
    train_tf, eval_tf = build_transforms(cfg.data, img_size=cfg.model.img_size, backbone=cfg.model.backbone)
    train_ds = build_dataset(cfg.data, cfg.data.train_split, train_tf)
    val_ds = build_dataset(cfg.data, cfg.data.val_split, eval_tf)
    train_loader = build_loader(train_ds, batch_size=cfg.data.batch_size, shuffle=True, workers=cfg.data.workers,
                                drop_last=True, seed=cfg.train.seed)
    val_loader = build_loader(val_ds, batch_size=cfg.data.eval_batch_size or 64, workers=0)
    epochs = cfg.train.epochs if contrastive else (cfg.train.baseline_epochs or cfg.train.epochs)
    steps = len(train_loader) if cfg.train.max_steps_per_epoch is None else min(len(train_loader),
                                                                                 cfg.train.max_steps_per_epoch)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, epochs=epochs, steps_per_epoch=steps)
    ema = ModelEma(model, decay=cfg.train.ema_decay)
    best, best_path = -1.0, stage_dir / "best.pt"
    for epoch in range(epochs):
        losses = train_one_epoch(model, criterion, train_loader, optimizer, scheduler, device="cpu", epoch=epoch,
                                 ema=ema, max_steps=cfg.train.max_steps_per_epoch)
        for source, m in (("regular", model), ("ema", ema.module)):
            val = evaluate(m, val_loader, device="cpu")
            logger.info("%s %s epoch %d: loss %.3f, val mAP %.2f", stage_dir, source, epoch, losses.get("loss", 0),
                        val["mAP"])
            if val["mAP"] > best:
                best = float(val["mAP"])
                save_checkpoint({"model": m.state_dict(), "config": cfg.to_dict(), "class_names": train_ds.class_names,
                                 "stage": stage, "epoch": epoch,
                                 "metrics": {"mAP": best, "source": source, "CF1": float(val["CF1"]),
                                             "OF1": float(val["OF1"])}}, best_path)
    return best_path


def engine_prototypes(cfg: Any, checkpoint: Path, out: Path) -> Path:
    """Prototypes from a stage-1 checkpoint over the training split (eval transform), saved as ``.npy``."""
    from sadcl.checkpoint import load_model
    from sadcl.data import build_dataset, build_loader
    from sadcl.prototypes import compute_prototypes, save_prototypes
    from sadcl.visualize import eval_transform

    model, ckpt_cfg, _ = load_model(checkpoint)
    dataset = build_dataset(cfg.data, cfg.data.train_split, eval_transform(ckpt_cfg))
    loader = build_loader(dataset, batch_size=cfg.data.eval_batch_size or 64, workers=0)
    protos, _ = compute_prototypes(model, loader, threshold=cfg.train.prototype_threshold,
                                   rule=cfg.train.prototype_rule)
    return save_prototypes(protos, out)


def run_stage1(args: argparse.Namespace, seed: int, seed_dir: Path) -> dict[str, Any]:
    """Stage 1 (baseline) and the prototypes of one seed; skipped when its ``result.json`` exists."""
    stage_dir = seed_dir / "stage1"
    done = _read_json(stage_dir / "result.json")
    if done:
        return done
    cfg = run_config(args, seed, stage_dir)
    t0 = time.time()
    proto = stage_dir / "prototypes.npy"
    if _has_run_training():
        from sadcl.train import run_training

        run_training(cfg, stage="baseline")
        ckpt = _selected_checkpoint(stage_dir / "baseline")
        if not proto.is_file():
            run_training(cfg, stage="prototypes")
    else:
        ckpt = engine_stage(cfg, "baseline", stage_dir / "baseline")
        engine_prototypes(cfg, ckpt, proto)
    result = {"variant": "stage1", "seed": seed, "checkpoint": str(ckpt), "prototypes": str(proto),
              "train_seconds": time.time() - t0, **_checkpoint_info(ckpt),
              "test": evaluate_checkpoint(ckpt, cfg, "test", args.eval_batch_size)}
    _write_json(stage_dir / "result.json", result)
    return result


def run_stage2(args: argparse.Namespace, seed: int, seed_dir: Path, v: Variant) -> dict[str, Any]:
    """One stage-2 variant from the seed's shared stage 1; skipped when its ``result.json`` exists."""
    run_dir = seed_dir / v.key
    done = _read_json(run_dir / "result.json")
    if done:
        return done
    stage1 = _read_json(seed_dir / "stage1" / "result.json")
    if stage1 is None:
        raise RuntimeError(f"stage 1 of seed {seed} has not finished")
    cfg = run_config(args, seed, run_dir, variant_overrides(v))
    t0 = time.time()
    if _has_run_training():
        from sadcl.train import run_training

        # Share stage 1: the variant's run directory gets the stage-1 outputs, so stage 2 starts from them.
        (run_dir / "baseline").mkdir(parents=True, exist_ok=True)
        for src, dst in ((Path(stage1["checkpoint"]), run_dir / "baseline" / "best.pt"),
                         (Path(stage1["prototypes"]), run_dir / "prototypes.npy")):
            if not dst.exists():
                shutil.copy2(src, dst)
        run_training(cfg, stage="sadcl")
        ckpt = _selected_checkpoint(run_dir / "sadcl")
    else:
        ckpt = engine_stage(cfg, "sadcl", run_dir / "sadcl", init=Path(stage1["checkpoint"]),
                            prototypes=Path(stage1["prototypes"]))
    result = {"variant": v.key, "seed": seed, "checkpoint": str(ckpt), "train_seconds": time.time() - t0,
              **_checkpoint_info(ckpt), "test": evaluate_checkpoint(ckpt, cfg, "test", args.eval_batch_size)}
    _write_json(run_dir / "result.json", result)
    return result


def tasks(args: argparse.Namespace) -> Iterator[tuple[int, Variant]]:
    """(seed, variant) in priority order: the main comparison for every seed first, then the other rows."""
    chosen = [v for v in VARIANTS if v.key in args.variants]
    first = [v for v in chosen if v.key in PRIMARY]
    rest = [v for v in chosen if v.key not in PRIMARY]
    for group in (first, rest):
        for seed in args.seeds:
            for v in group:
                yield seed, v


# ----------------------------------------------------------------------------------------------------------- report
def collect(out: Path) -> dict[str, list[dict[str, Any]]]:
    """Every finished run's result, by row key."""
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in ROW_ORDER}
    for path in sorted(out.glob("seed*/*/result.json")):
        res = _read_json(path)
        if res and res.get("variant") in rows:
            rows[res["variant"]].append(res)
    return rows


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else float("nan")


def _cell(values: list[float]) -> str:
    if not values:
        return "–"
    m, s = _mean_std(values)
    return f"{m:.2f}" if not np.isfinite(s) else f"{m:.2f} ± {s:.2f}"


def table(rows: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown table: one row per variant, test mAP/CF1/OF1 mean ± std, val mAP, seeds."""
    lines = ["| row | seeds | test mAP | test CF1 | test OF1 | val mAP (selection) | train min/run |",
             "|---|---|---|---|---|---|---|"]
    for key in ROW_ORDER:
        runs = rows.get(key, [])
        if not runs:
            continue
        cells = [_cell([r["test"][m] for r in runs]) for m in METRICS]
        val = [r["val_metrics"].get("mAP") for r in runs if isinstance(r.get("val_metrics"), dict)]
        val = [x for x in val if x is not None]
        minutes = np.mean([r.get("train_seconds", float("nan")) for r in runs]) / 60
        seeds = ",".join(str(r["seed"]) for r in sorted(runs, key=lambda r: r["seed"]))
        lines.append(f"| {ROW_TITLES[key]} | {seeds} | {' | '.join(cells)} | {_cell(val)} | {minutes:.1f} |")
    return "\n".join(lines)


def paired_delta(rows: dict[str, list[dict[str, Any]]], a: str = "sadcl", b: str = "baseline") -> str:
    """Per-seed test mAP difference a - b over the seeds where both finished."""
    by_seed_a = {r["seed"]: r["test"]["mAP"] for r in rows.get(a, [])}
    by_seed_b = {r["seed"]: r["test"]["mAP"] for r in rows.get(b, [])}
    common = sorted(set(by_seed_a) & set(by_seed_b))
    if not common:
        return f"No seed has both {ROW_TITLES[a]} and {ROW_TITLES[b]} finished yet."
    deltas = [by_seed_a[s] - by_seed_b[s] for s in common]
    per = ", ".join(f"seed {s}: {d:+.2f}" for s, d in zip(common, deltas))
    m, s = _mean_std(deltas)
    spread = f" ± {s:.2f}" if np.isfinite(s) else ""
    wins = sum(d > 0 for d in deltas)
    return (f"Test mAP, {ROW_TITLES[a]} − {ROW_TITLES[b]}, paired by seed: {m:+.2f}{spread} "
            f"({per}; better on {wins}/{len(deltas)} seeds).")


def bar_chart(rows: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Small grouped bar chart of test mAP/CF1/OF1 (mean, std error bars) per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ROW_ORDER if rows.get(k)]
    if not keys:
        return
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    width = 0.8 / len(METRICS)
    x = np.arange(len(keys))
    lows = []
    for i, metric in enumerate(METRICS):
        stats = [_mean_std([r["test"][metric] for r in rows[k]]) for k in keys]
        means = np.array([m for m, _ in stats])
        errs = np.array([s if np.isfinite(s) else 0.0 for _, s in stats])
        lows.append((means - errs).min())
        ax.bar(x + (i - 1) * width, means, width, yerr=errs, capsize=2, label=metric)
    ax.set_xticks(x)
    ax.set_xticklabels([SHORT_TITLES[k] for k in keys], fontsize=7)
    ax.set_ylim(max(0.0, float(min(lows)) - 5.0), None)
    ax.set_ylabel("test, % (mean ± std over seeds)", fontsize=8)
    ax.set_title("SADCL ablation on MOM-30", fontsize=9)
    ax.legend(fontsize=7, ncol=3)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def tsne_figure(rows: dict[str, list[dict[str, Any]]], args: argparse.Namespace, path: Path) -> str | None:
    """t-SNE of 2 000 label-level test features, baseline vs SADCL, for the first seed with both finished."""
    from sadcl.checkpoint import load_model
    from sadcl.data import build_dataset
    from sadcl.visualize import collect_label_features, eval_transform, plot_embedding_panels, separation_score

    by_seed = {k: {r["seed"]: r for r in rows.get(k, [])} for k in PRIMARY}
    common = sorted(set(by_seed["baseline"]) & set(by_seed["sadcl"]))
    if not common:
        return None
    seed = common[0]
    panels, names, scores = [], None, {}
    for key in PRIMARY:
        res = by_seed[key][seed]
        model, cfg, names = load_model(res["checkpoint"])
        data_cfg = run_config(args, seed, Path(res["checkpoint"]).parent).data
        dataset = build_dataset(data_cfg, "test", eval_transform(cfg))
        feats, labels = collect_label_features(model, dataset, n=args.tsne_n, batch_size=args.eval_batch_size)
        scores[key] = separation_score(feats, labels)
        panels.append((f"{ROW_TITLES[key].split(' (')[0]} (silhouette {scores[key]:.3f})", feats, labels))
    plot_embedding_panels(panels, path, class_names=names, seed=0)
    return (f"t-SNE of {len(panels[0][1])} label-level features of MOM-30 test images (seed {seed}): "
            f"cosine silhouette baseline {scores['baseline']:.3f}, SADCL {scores['sadcl']:.3f}.")


def report(args: argparse.Namespace, status: str, elapsed_s: float, tsne_note: str | None) -> str:
    """Write the chart and the ``ablation`` section of BENCHMARKS.md; returns the section text."""
    rows = collect(Path(args.out))
    chart = Path(args.chart)
    bar_chart(rows, chart)
    lines = ["## Ablation on MOM-30 (`benchmarks/ablation.py`)", "",
             f"- Date and machine: {machine_line()}",
             f"- Command: `{command_line()}`",
             f"- Config: {_config_note(args)} with overrides `{' '.join(base_overrides(args))}`; "
             f"seeds {' '.join(map(str, args.seeds))}; stage 1 {args.baseline_epochs or args.epochs} epochs, "
             f"stage 2 {args.epochs} epochs.",
             f"- Status: {status} (wall time of this invocation {elapsed_s / 60:.1f} min).",
             "- Protocol: stage 1 (Query2Label baseline) once per seed; prototypes once per seed; every stage-2 row "
             "starts from them with the same epochs and schedule. The baseline row is stage 1 + stage 2 with both "
             "contrastive weights 0, i.e. the same total training budget as SADCL. Model selection on val, numbers "
             "on test (threshold 0.5 for CF1/OF1); mean ± sample std over the seeds listed per row.",
             f"- Trainer: {'`sadcl.train.run_training`' if _has_run_training() else _ENGINE_NOTE}", ""]
    if args.quick:
        lines += ["> **Quick smoke run** (tiny sizes): these numbers only show that the script works.", ""]
    lines += [table(rows), "", paired_delta(rows), "", f"![ablation]({_rel(chart)})", ""]
    if tsne_note:
        lines += [tsne_note, "", f"![t-SNE]({_rel(Path(args.tsne))})", ""]
    text = "\n".join(lines)
    if not args.no_write:
        update_section("ablation", text)
    return text


def _config_note(args: argparse.Namespace) -> str:
    if Path(args.config).is_file():
        return f"`{_rel(Path(args.config))}`"
    return (f"a stand-in demo configuration (`{_rel(Path(args.config))}` did not exist yet: "
            f"`{' '.join(STANDIN_DEMO)}`, ImageNet EfficientNet-Lite0 weights)")


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(DEMO_CONFIG), help="run config (default: configs/mom30_demo.yaml)")
    p.add_argument("--out", default="runs/ablation", help="run directory (default: runs/ablation)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    p.add_argument("--variants", nargs="+", default=[v.key for v in VARIANTS],
                   choices=[v.key for v in VARIANTS], help="stage-2 rows to run (default: all)")
    p.add_argument("--n-train", type=int, default=2000, help="MOM-30 train images (default: 2000)")
    p.add_argument("--n-val", type=int, default=500, help="MOM-30 val images (default: 500)")
    p.add_argument("--n-test", type=int, default=1000, help="MOM-30 test images (default: 1000)")
    p.add_argument("--epochs", type=int, default=3, help="stage-2 epochs (default: 3)")
    p.add_argument("--baseline-epochs", type=int, default=None, help="stage-1 epochs (default: --epochs)")
    p.add_argument("--ema-decay", type=float, default=0.99,
                   help="EMA decay for every run (default: 0.99; the official 0.9998 barely moves in a short run)")
    p.add_argument("--prototype-threshold", type=float, default=0.5,
                   help="confidence a positive needs to enter a prototype (default: 0.5; the official 0.85 is "
                        "reached by few positives after a short stage 1)")
    p.add_argument("--img-size", type=int, default=None, help="image size (default: the config's)")
    p.add_argument("--max-steps", type=int, default=None, help="cap iterations per epoch")
    p.add_argument("--data-root", default=None,
                   help="MOM-30 directory (default: sadcl's cache, one directory per size/count set)")
    p.add_argument("--eval-batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--tsne-n", type=int, default=2000, help="label-level features in the t-SNE (default: 2000)")
    p.add_argument("--chart", default=str(CHART))
    p.add_argument("--tsne", default=str(TSNE))
    p.add_argument("--no-tsne", action="store_true")
    p.add_argument("--report-only", action="store_true", help="only rebuild the tables and figures")
    p.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="extra config overrides for every run")
    args = p.parse_args(argv)
    if args.quick:
        args.n_train, args.n_val, args.n_test = min(args.n_train, 32), min(args.n_val, 16), min(args.n_test, 16)
        args.epochs, args.max_steps, args.tsne_n = 1, args.max_steps or 2, min(args.tsne_n, 40)
        args.img_size = args.img_size or 32
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out)
    t_start = time.time()
    status = "complete"
    if not args.report_only:
        from tqdm import tqdm

        todo = list(tasks(args))
        bar = tqdm(todo, desc="ablation", unit="run", dynamic_ncols=True)
        for seed, v in bar:
            bar.set_postfix_str(f"seed {seed} {v.key}")
            seed_dir = out / f"seed{seed}"
            run_stage1(args, seed, seed_dir)
            run_stage2(args, seed, seed_dir, v)
            report(args, f"running ({bar.n + 1}/{len(todo)} stage-2 runs done)", time.time() - t_start, None)
        bar.close()
    rows = collect(out)
    expected = len(args.seeds) * len(args.variants)
    done = sum(len(rows.get(v, [])) for v in args.variants)
    if done < expected:
        status = f"partial: {done} of {expected} stage-2 runs finished"
    tsne_note = None if args.no_tsne else tsne_figure(rows, args, Path(args.tsne))
    text = report(args, status, time.time() - t_start, tsne_note)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
