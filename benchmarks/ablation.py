"""The SADCL ablation on MOM-30: baseline (SARL only), +SSCL, +PSCL and full SADCL, several seeds, one command.

Usage:
    python benchmarks/ablation.py                          # defaults: 3 seeds, 1 stage 1 + 6 stage-2 runs per seed
    python benchmarks/ablation.py --seeds 0 1 --rows sadcl baseline --out runs/abl_small   # smaller
    python benchmarks/ablation.py --report-only            # only rebuild the table and figures from finished runs
    python benchmarks/ablation.py --quick --out /tmp/abl   # smoke run, tiny sizes, numbers meaningless

Default sizes: exactly ``configs/mom30_demo.yaml`` (the ``make demo`` run: MOM-30 at 4 000 train / 500 val / 1 000
test images, stage 1 for 4 epochs, stage 2 for 3 epochs, the official prototype threshold 0.85), so the SADCL row of
seed 1 is the demo's run. Per seed that is 16 000 stage-1 and 6 x 12 000 stage-2 training images plus the val/test
evaluations: about 23 minutes on 2 CPU cores (the demo model trains at about 75 images/s there), about 70 minutes
for the default 3 seeds, within the 2-hour budget. ``--n-train``, ``--epochs`` etc. override the config for every run.

Protocol (per seed S, ``train.seed = S`` for every run of that seed):

1. Stage 1 trains the Query2Label baseline ("SARL only") once: ``sadcl.train.run_training(stages=("baseline",))``
   into ``OUT/seedS/stage1``. Its validation-selected model gives the prototypes (``sadcl.prototypes.
   build_prototypes``, training split), once, in ``OUT/seedS/stage1/prototypes.npy``.
2. Every stage-2 row starts from that stage-1 model and those prototypes (``run_training(stages=("sadcl",),
   baseline_checkpoint=..., model.prototypes=...)`` into ``OUT/seedS/<row>``), with the same epochs and schedule:

   ============================  ==============  ==============  =============================
   row                           weight_sscl     weight_pscl     SSCL
   ============================  ==============  ==============  =============================
   baseline (same budget)        0               0               config's
   +SSCL                         config's        0               config's
   +PSCL                         0               config's        config's
   SADCL                         config's        config's        config's
   SADCL (official SSCL)         config's        config's        official variant
   SADCL (uncalibrated)          100             50              paper, anchor scale none
   ============================  ==============  ==============  =============================

   "config's" is the run config's value (the demo config and the library defaults: SSCL 100, calibrated paper variant,
   PSCL 5; the paper's configs: PSCL 50). The last row is the recipe before the SSCL calibration (issue #10); more rows
   come with ``--row NAME KEY=VALUE ...`` (e.g. the official PSCL 50 on the demo config).

   The baseline row keeps the contrastive model (projection head, bank, prototypes) and computes every term, with
   both weights 0: it gets exactly the budget of SADCL (stage 1 + stage 2, same steps and cost), so the comparison
   measures the contrastive terms, not extra epochs. "Stage 1 only" (a shorter budget) is shown for reference.
3. Model selection (best epoch, EMA or regular weights) uses the validation split only; the selected model is
   evaluated once on the test split: mAP, CF1 and OF1 (threshold 0.5). The table gives mean ± sample std over the
   seeds that finished, and each row's test mAP minus the same-budget baseline's, paired by seed.

Order: every seed's stage 1, SADCL and same-budget baseline first, then the other rows, so a run cut short still has
the main comparison. Resumable: a run whose ``results.json`` exists is skipped, and an interrupted one continues from
its ``last.pt`` (``run_training(resume=True)``); delete a run's directory to redo it. Each run decodes its images
again (with ``data.cache_images`` a run frees its entries when it ends: a few seconds a run). Outputs: the
``ablation`` section of ``BENCHMARKS.md`` (rewritten after every finished run), the bar chart
``benchmarks/ablation.png`` and the t-SNE figure ``benchmarks/embeddings_tsne.png`` (label-level features of test
images, same-budget baseline vs SADCL, first seed with both finished). With ``--quick`` these three default to files
inside ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, command_line, machine_line, repo_relative, update_section  # noqa: E402
from sadcl.io import atomic_write_text, read_json  # noqa: E402

logger = logging.getLogger("ablation")

DEMO_CONFIG = REPO_ROOT / "configs" / "mom30_demo.yaml"
CHART = REPO_ROOT / "benchmarks" / "ablation.png"
TSNE = REPO_ROOT / "benchmarks" / "embeddings_tsne.png"
METRICS = ("mAP", "CF1", "OF1")
STAGE1 = "stage1"
TIME_FILE = "ablation_seconds.json"
"""Wall seconds this script spent on a stage (summed over invocations), next to the stage's results.json."""

QUICK_OVERRIDES = [
    "model.backbone=resnet18",
    "model.pretrained=false",
    "model.pretrained_file=null",
    "model.img_size=32",
    "model.hidden_dim=32",
    "model.dim_feedforward=64",
    "model.proj_dim=16",
    "model.bank_slots=8",
    "data.options.size=32",
    "data.batch_size=8",
    "data.eval_batch_size=16",
    "data.workers=0",
    "train.max_steps_per_epoch=2",
    "train.log_interval=1",
]


@dataclass(frozen=True)
class Row:
    """One stage-2 row of the ablation: config overrides on top of the run config (the ``sadcl`` row has none)."""

    key: str
    title: str
    short: str
    settings: tuple[str, ...] = ()

    def overrides(self) -> list[str]:
        return list(self.settings)


ROWS = (
    Row("sadcl", "SADCL (the config's recipe when run)", "SADCL"),
    Row(
        "baseline",
        "baseline (SARL only, same budget)",
        "baseline\n(same budget)",
        ("loss.weight_sscl=0.0", "loss.weight_pscl=0.0"),
    ),
    Row("sscl", "+SSCL", "+SSCL", ("loss.weight_pscl=0.0",)),
    Row("pscl", "+PSCL", "+PSCL", ("loss.weight_sscl=0.0",)),
    Row("sadcl_official", "SADCL, official SSCL", "SADCL\n(official SSCL)", ("loss.sscl_variant=official",)),
    # The uncalibrated paper loss at the official weights: the landed default before the anchor scale (issue #10).
    Row(
        "sadcl_uncalibrated",
        "SADCL, paper SSCL unscaled, weights 100/50",
        "SADCL\n(unscaled 100/50)",
        ("loss.sscl_anchor_scale=none", "loss.weight_sscl=100.0", "loss.weight_pscl=50.0"),
    ),
)
BUILTIN = {r.key: r for r in ROWS}
PRIMARY = ("sadcl", "baseline")
BUILTIN_ORDER = (STAGE1, "baseline", "sscl", "pscl", "sadcl", "sadcl_official", "sadcl_uncalibrated")
ROW_ORDER = BUILTIN_ORDER
TITLES = {STAGE1: "stage 1 only (shorter budget)", **{r.key: r.title for r in ROWS}}
SHORT = {STAGE1: "stage 1\nonly", **{r.key: r.short for r in ROWS}}
ROW_BY_KEY: dict[str, Row] = dict(BUILTIN)


def register_rows(specs: list[list[str]] | None) -> list[str]:
    """Add ``--row KEY KEY=VALUE ...`` rows (e.g. a weight sweep); returns their keys in order."""
    global ROW_ORDER
    keys = []
    for spec in specs or []:
        key, settings = spec[0], tuple(spec[1:])
        if key in BUILTIN or key == STAGE1 or "=" in key or "/" in key:
            raise SystemExit(f"--row {key}: the first word is the row's name (not a built-in row, no '=' or '/')")
        bad = [x for x in settings if "=" not in x]
        if bad:
            raise SystemExit(f"--row {key}: expected KEY=VALUE settings, got {bad}")
        ROW_BY_KEY[key] = Row(key, f"{key} ({' '.join(settings)})", key, settings)
        TITLES[key], SHORT[key] = ROW_BY_KEY[key].title, key
        keys.append(key)
    ROW_ORDER = (*BUILTIN_ORDER, *(k for k in ROW_BY_KEY if k not in BUILTIN_ORDER))
    return keys


# ----------------------------------------------------------------------------------------------------------- config
def base_overrides(args: argparse.Namespace, *, with_set: bool = True) -> list[str]:
    """Config overrides shared by every run of the ablation (sizes, epochs, quiet output, then ``--set``)."""
    given = {
        "data.options.n_train": args.n_train,
        "data.options.n_val": args.n_val,
        "data.options.n_test": args.n_test,
        "train.baseline_epochs": args.baseline_epochs,
        "train.epochs": args.epochs,
        "train.prototype_threshold": args.prototype_threshold,
    }
    ov = [f"{k}={v}" for k, v in given.items() if v is not None]  # None: the config's own value
    ov += ["data.options.progress=false", "train.progress=false", "train.tensorboard=false"]
    if args.quick:
        ov += QUICK_OVERRIDES
    return ov + (list(args.set or []) if with_set else [])


def run_config(
    args: argparse.Namespace, run_dir: Path, seed: int, row: Row | None = None, extra: list[str] | None = None
) -> Any:
    """The full :class:`~sadcl.config.Config` of one run directory.

    Precedence: the config file < sizes and epochs flags < the row's settings < ``extra`` < ``--set`` (so ``--set``
    changes every row, the row's own settings included; a clash is logged once per row).
    """
    from sadcl.config import load_config

    row_ov = row.overrides() if row is not None else []
    clash = sorted({x.split("=", 1)[0] for x in row_ov} & {x.split("=", 1)[0] for x in args.set or []})
    if clash and row is not None and row.key not in _WARNED:
        _WARNED.add(row.key)
        logger.warning("--set overrides row %s's own setting(s) %s", row.key, ", ".join(clash))
    return load_config(
        args.config,
        [
            *base_overrides(args, with_set=False),
            f"train.seed={seed}",
            f"train.output_dir={run_dir}",
            *row_ov,
            *(extra or []),
            *(args.set or []),
        ],
    )


_WARNED: set[str] = set()


def seed_dir(out: Path, seed: int) -> Path:
    return out / f"seed{seed}"


def stage_dir(out: Path, seed: int, key: str) -> Path:
    """The directory holding ``results.json``/``best.pt`` of a row (``stage1`` = the stage-1 baseline)."""
    return seed_dir(out, seed) / key / ("baseline" if key == STAGE1 else "sadcl")


# ----------------------------------------------------------------------------------------------------------- runs
def _finished(stage: Path) -> bool:
    res = read_json(stage / "results.json")
    return isinstance(res, dict) and "test" in res


def _add_seconds(stage: Path, seconds: float) -> None:
    total = (read_json(stage / TIME_FILE) or {}).get("seconds", 0.0) + seconds
    stage.mkdir(parents=True, exist_ok=True)
    (stage / TIME_FILE).write_text(json.dumps({"seconds": total}))


def _prototypes_current(protos: Path, checkpoint: Path, threshold: float, rule: str) -> bool:
    """Whether ``protos`` was built from this very checkpoint (not an earlier stage 1) with these settings."""
    meta = read_json(protos.with_suffix(".json"))
    return (
        protos.is_file()
        and isinstance(meta, dict)
        and meta.get("checkpoint") == str(checkpoint)
        and meta.get("threshold") == threshold
        and meta.get("rule") == rule
        and protos.stat().st_mtime >= checkpoint.stat().st_mtime
    )


def check_same_config(run_dir: Path, cfg: Any, stages: tuple[str, ...] = ("sadcl",)) -> None:
    """A run directory's saved config must be the one asked for now: a finished run is reused, never mislabelled.
    For a stage-1 directory only what stage 1 reads counts (``sadcl.train.changed_settings``).

    Raises:
        ConfigError: naming the differing keys (delete the run directory, or use another --out or --report-only).
    """
    from sadcl.config import ConfigError
    from sadcl.train import changed_settings, saved_run_config

    saved = run_dir / "config.yaml"
    if saved.is_file():
        changed = changed_settings(saved_run_config(saved), cfg, stages)
        if changed:
            raise ConfigError(
                f"{saved} was run with other settings ({'; '.join(changed)}): delete {run_dir} to redo "
                "it, or choose another --out"
            )


def run_stage1(args: argparse.Namespace, seed: int) -> Path:
    """Stage 1 of a seed and its prototypes (each skipped when done); returns the prototypes file."""
    from sadcl.distributed import init_distributed
    from sadcl.prototypes import build_prototypes
    from sadcl.train import run_training

    run_dir = seed_dir(Path(args.out), seed) / STAGE1
    cfg = run_config(args, run_dir, seed)
    check_same_config(run_dir, cfg, ("baseline",))
    stage = run_dir / "baseline"
    if not _finished(stage):
        t0 = time.time()
        run_training(cfg, stages=("baseline",), resume=True)
        _add_seconds(stage, time.time() - t0)
    protos, best = run_dir / "prototypes.npy", stage / "best.pt"
    if not _prototypes_current(protos, best, cfg.train.prototype_threshold, cfg.train.prototype_rule):
        device = init_distributed(device=cfg.train.device).device
        build_prototypes(
            best,
            out=protos,
            threshold=cfg.train.prototype_threshold,
            rule=cfg.train.prototype_rule,
            fallback=cfg.train.prototype_fallback,
            split=cfg.data.train_split,
            data=cfg.data,
            device=device,
        )
    return protos


def run_row(args: argparse.Namespace, seed: int, row: Row) -> None:
    """One stage-2 row from the seed's shared stage-1 model and prototypes; skipped when finished."""
    from sadcl.train import run_training

    out = Path(args.out)
    stage = stage_dir(out, seed, row.key)
    protos = seed_dir(out, seed) / STAGE1 / "prototypes.npy"
    cfg = run_config(args, seed_dir(out, seed) / row.key, seed, row, [f"model.prototypes={protos}"])
    check_same_config(seed_dir(out, seed) / row.key, cfg)
    if _finished(stage):
        return
    run_stage1(args, seed)  # a no-op when stage 1 and its prototypes are done
    t0 = time.time()
    run_training(cfg, stages=("sadcl",), resume=True, baseline_checkpoint=stage_dir(out, seed, STAGE1) / "best.pt")
    _add_seconds(stage, time.time() - t0)


def tasks(args: argparse.Namespace) -> list[tuple[int, str]]:
    """``(seed, row key)`` in priority order: stage 1, SADCL and baseline of every seed first, then the other rows."""
    first = [k for k in PRIMARY if k in args.rows]
    rest = [k for k in args.rows if k not in PRIMARY]
    todo = [(seed, key) for seed in args.seeds for key in (STAGE1, *first)]
    return todo + [(seed, key) for key in rest for seed in args.seeds]


# ----------------------------------------------------------------------------------------------------------- report
def _num(x: Any) -> float:
    return float("nan") if x is None else float(x)


def collect(out: Path, seeds: list[int]) -> dict[str, list[dict[str, Any]]]:
    """The finished runs of every row: ``{key: [{"seed", "test", "val_mAP", "minutes", "checkpoint"}, ...]}``."""
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in ROW_ORDER}
    for seed in seeds:
        for key in ROW_ORDER:
            stage = stage_dir(out, seed, key)
            res = read_json(stage / "results.json")
            if not (isinstance(res, dict) and "test" in res):
                continue
            val = res.get("val") or {}
            seconds = (read_json(stage / TIME_FILE) or {}).get("seconds")
            rows[key].append(
                {
                    "seed": seed,
                    "test": {m: _num(res["test"].get(m)) for m in METRICS},
                    "val_mAP": _num((val.get(res.get("selected")) or {}).get("mAP")),
                    "selected": res.get("selected"),
                    "best_epoch": res.get("best_epoch"),
                    "minutes": _num(seconds) / 60,
                    "checkpoint": str(stage / "best.pt"),
                }
            )
    return rows


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else float("nan")


def _cell(values: list[float], sign: bool = False) -> str:
    if not values:
        return "–"
    m, s = _mean_std(values)
    fmt = "+.2f" if sign else ".2f"
    return f"{m:{fmt}}" if math.isnan(s) else f"{m:{fmt}} ± {s:.2f}"


def _paired(rows: dict[str, list[dict[str, Any]]], a: str, b: str, metric: str = "test") -> dict[int, float]:
    """Per-seed mAP of row ``a`` minus row ``b`` (``metric`` 'test' or 'val'), over the seeds where both finished."""

    def value(r: dict[str, Any]) -> float:
        return r["test"]["mAP"] if metric == "test" else r["val_mAP"]

    by_b = {r["seed"]: value(r) for r in rows.get(b, [])}
    return {r["seed"]: value(r) - by_b[r["seed"]] for r in rows.get(a, []) if r["seed"] in by_b}


def paired_stats(deltas: list[float]) -> dict[str, float]:
    """Mean, sample std, two-sided 95 % t confidence interval and paired t-test p-value of per-seed differences."""
    from scipy import stats

    d = np.asarray(deltas, dtype=np.float64)
    n = len(d)
    out = {
        "n": n,
        "mean": float(d.mean()) if n else math.nan,
        "std": math.nan,
        "ci95_low": math.nan,
        "ci95_high": math.nan,
        "p": math.nan,
    }
    if n > 1:
        sd = float(d.std(ddof=1))
        half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
        out.update(std=sd, ci95_low=out["mean"] - half, ci95_high=out["mean"] + half)
        out["p"] = float(stats.ttest_1samp(d, 0.0).pvalue) if sd > 0 else (0.0 if out["mean"] != 0 else 1.0)
    return out


def _ci_cell(st: dict[str, float]) -> str:
    if not st["n"]:
        return "–"
    if st["n"] < 2:
        return f"{st['mean']:+.2f}"
    return f"{st['mean']:+.2f} [{st['ci95_low']:+.2f}, {st['ci95_high']:+.2f}], p={st['p']:.3f}"


def recipe(runs: list[dict[str, Any]]) -> str:
    """The stage-2 loss settings the runs of a row actually used (from their saved config.yaml), e.g.
    ``SSCL 100 · PSCL 50 · γ− 4 · paper SSCL, anchor scale official``; ``mixed`` when the seeds differ."""
    import yaml

    seen = set()
    for r in runs:
        saved = Path(r["checkpoint"]).parent / "config.yaml"
        loss = (yaml.safe_load(saved.read_text()) or {}).get("loss", {}) if saved.is_file() else {}
        if loss:
            seen.add(
                f"SSCL {loss['weight_sscl']:g} · PSCL {loss['weight_pscl']:g} · γ− {loss['gamma_neg']:g} · "
                f"{loss['sscl_variant']} SSCL"
                + (f", anchor scale {loss.get('sscl_anchor_scale', 'none')}" if loss["sscl_variant"] == "paper" else "")
            )
    return "mixed settings across seeds" if len(seen) > 1 else next(iter(seen), "")


def table(rows: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown table: test mAP/CF1/OF1 mean ± std per row, paired Δ mAP vs the same-budget baseline, val mAP."""
    lines = [
        "| row | seeds | test mAP | test CF1 | test OF1 | Δ test mAP vs baseline (paired, 95 % CI, p) "
        "| val mAP (selection) | Δ val mAP vs baseline | min/run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key in ROW_ORDER:
        runs = rows.get(key, [])
        if not runs:
            continue
        cells = [_cell([r["test"][m] for r in runs]) for m in METRICS]
        delta = "–" if key == "baseline" else _ci_cell(paired_stats(list(_paired(rows, key, "baseline").values())))
        vdelta = "–" if key == "baseline" else _cell(list(_paired(rows, key, "baseline", "val").values()), sign=True)
        minutes = [r["minutes"] for r in runs if not math.isnan(r["minutes"])]
        seeds = ",".join(str(r["seed"]) for r in runs)
        how = recipe(runs) if key != STAGE1 else ""
        lines.append(
            f"| {TITLES[key]}{f' ({how})' if how else ''} | {seeds} | {' | '.join(cells)} | {delta} | "
            f"{_cell([r['val_mAP'] for r in runs])} | {vdelta} | "
            f"{f'{np.mean(minutes):.1f}' if minutes else '–'} |"
        )
    return "\n".join(lines)


def paired_sentence(rows: dict[str, list[dict[str, Any]]], a: str = "sadcl", b: str = "baseline") -> str:
    """One sentence: per-seed test mAP difference ``a - b``, its 95 % CI and p, and how many seeds ``a`` wins."""
    deltas = _paired(rows, a, b)
    if not deltas:
        return f"No seed has both {TITLES[a]} and {TITLES[b]} finished yet."
    wins = sum(d > 0 for d in deltas.values())
    return (
        f"Test mAP, {TITLES[a]} − {TITLES[b]}, paired by seed: {_ci_cell(paired_stats(list(deltas.values())))} "
        f"(std {_mean_std(list(deltas.values()))[1]:.2f}; better on {wins}/{len(deltas)} seeds)."
    )


def per_seed_table(rows: dict[str, list[dict[str, Any]]], a: str = "sadcl", b: str = "baseline") -> str:
    """Markdown table of the decisive comparison, one line per seed: val and test mAP of both rows and Δ."""
    ra, rb = ({r["seed"]: r for r in rows.get(k, [])} for k in (a, b))
    seeds = [s for s in ra if s in rb]
    if not seeds:
        return ""
    lines = [f"| seed | {b} val | {a} val | {b} test | {a} test | Δ test |", "|---|---|---|---|---|---|"]
    for seed in seeds:
        x, y = rb[seed], ra[seed]
        lines.append(
            f"| {seed} | {x['val_mAP']:.2f} | {y['val_mAP']:.2f} | {x['test']['mAP']:.2f} | "
            f"{y['test']['mAP']:.2f} | {y['test']['mAP'] - x['test']['mAP']:+.2f} |"
        )
    return "\n".join(lines)


def results_json(args: argparse.Namespace, rows: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """``{"rows": {ROW: {"settings", "seeds": {SEED: {"val_mAP", "test_mAP", ...}}}}, "paired": ..., "command"}``."""
    data: dict[str, Any] = {
        "command": command_line(),
        "config": repo_relative(args.config),
        "overrides": base_overrides(args),
        "rows": {},
        "paired_vs_baseline": {},
    }
    for key in ROW_ORDER:
        if not rows.get(key):
            continue
        row = ROW_BY_KEY.get(key)
        data["rows"][key] = {
            "title": TITLES[key],
            "settings": row.overrides() if row else [],
            "recipe": recipe(rows[key]) if key != STAGE1 else "stage 1",
            "seeds": {
                str(r["seed"]): {
                    "val_mAP": r["val_mAP"],
                    "test_mAP": r["test"]["mAP"],
                    "test_CF1": r["test"]["CF1"],
                    "test_OF1": r["test"]["OF1"],
                    "best_epoch": r["best_epoch"],
                    "selected": r["selected"],
                    "minutes": r["minutes"],
                }
                for r in rows[key]
            },
        }
        if key != "baseline":
            test = paired_stats(list(_paired(rows, key, "baseline").values()))
            val = paired_stats(list(_paired(rows, key, "baseline", "val").values()))
            if test["n"]:
                data["paired_vs_baseline"][key] = {"test_mAP": test, "val_mAP": val}
    atomic_write_text(path, json.dumps(data, indent=1, allow_nan=True) + "\n")


def validated_mean(curves: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """The 1-based epochs that any seed validated (over the shortest curve) and the mean val mAP over the seeds that
    did. Epochs skipped by ``train.val_interval`` are NaN in a curve: left out, so the line joins validated epochs."""
    length = min(len(c) for c in curves)
    block = np.array([c[:length] for c in curves], dtype=float)  # [seeds, epochs]
    scored = ~np.isnan(block).all(axis=0)
    kept = block[:, scored]
    return np.arange(1, length + 1)[scored], kept.mean(axis=0, where=~np.isnan(kept))


def curves_figure(out: Path, seeds: list[int], path: Path, keys: tuple[str, str] = ("baseline", "sadcl")) -> bool:
    """Val mAP by epoch (stage 1, then stage 2 of each row; mean over seeds, thin lines per seed) and the SADCL
    row's gradient share of each loss term on the trunk; False when no stage-2 history exists."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    def history(stage: Path) -> list[dict[str, Any]]:
        return read_json(stage / "metrics.json") or []

    def best_val(row: dict[str, Any]) -> float:
        v = row.get("val") or {}
        return max(_num((v.get("regular") or {}).get("mAP")), _num((v.get("ema") or {}).get("mAP")))

    fig, (ax, axz, ax2) = plt.subplots(1, 3, figsize=(13, 3.4))
    drawn = False
    colours = {keys[0]: "tab:blue", keys[1]: "tab:red", STAGE1: "tab:gray"}
    n1 = 0
    for key in (STAGE1, *keys):
        curves = [[best_val(r) for r in history(stage_dir(out, s, key))] for s in seeds]
        curves = [c for c in curves if c]
        if not curves:
            continue
        if key == STAGE1:
            n1 = max(len(c) for c in curves)
        offset = 0 if key == STAGE1 else n1
        epochs, mean = validated_mean(curves)
        for axis in (ax, axz) if key != STAGE1 else (ax,):
            for c in curves:
                x, y = validated_mean([c])
                axis.plot(x + offset, y, color=colours[key], alpha=0.2, lw=0.8)
            axis.plot(
                epochs + offset,
                mean,
                color=colours[key],
                lw=2,
                marker="o",
                ms=3,
                label=f"{TITLES[key]} (mean of {len(curves)})",
            )
        drawn = drawn or key != STAGE1
    ax.set_xlabel("epoch (stage 1, then stage 2)", fontsize=8)
    ax.set_ylabel("val mAP (better of regular / EMA)", fontsize=8)
    ax.legend(fontsize=6)
    ax.tick_params(labelsize=7)
    ax.set_title("validation mAP by epoch", fontsize=9)
    axz.set_xlabel("epoch (stage 2 only)", fontsize=8)
    axz.set_title("stage 2, zoomed (thin lines: seeds)", fontsize=9)
    axz.tick_params(labelsize=7)
    if drawn:
        axz.legend(fontsize=6)
    terms = ("asl", "sscl", "pscl")
    shares: dict[str, list[list[float]]] = {t: [] for t in terms}
    for s in seeds:
        rows_ = history(stage_dir(out, s, keys[1]))
        for t in terms:
            vals = [_num((r.get("train") or {}).get(f"grad_share_{t}")) for r in rows_]
            if vals and not all(math.isnan(v) for v in vals):
                shares[t].append(vals)
    for t in terms:
        if shares[t]:
            length = min(len(v) for v in shares[t])
            ax2.plot(
                np.arange(length) + 1, np.nanmean([v[:length] for v in shares[t]], axis=0), marker="o", label=t.upper()
            )
    ax2.set_ylim(0, 1)
    if not any(shares.values()):
        ax2.text(0.5, 0.5, "no gradient probes recorded", ha="center", va="center", fontsize=8)
    else:
        ax2.legend(fontsize=7)
    ax2.set_xlabel("stage-2 epoch", fontsize=8)
    ax2.set_ylabel("share of the trunk gradient norm", fontsize=8)
    ax2.set_title(f"{TITLES[keys[1]]}: gradient share per term", fontsize=9)
    ax2.tick_params(labelsize=7)
    for axis in (ax, axz, ax2):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    if drawn:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=90)
    plt.close(fig)
    return drawn


def bar_chart(rows: dict[str, list[dict[str, Any]]], path: Path) -> bool:
    """Grouped bar chart of test mAP/CF1/OF1 (mean, std error bars) per row; False when nothing finished."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ROW_ORDER if rows.get(k)]
    if not keys:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    width = 0.8 / len(METRICS)
    x = np.arange(len(keys))
    lows = []
    for i, metric in enumerate(METRICS):
        stats = [_mean_std([r["test"][metric] for r in rows[k]]) for k in keys]
        means = np.array([m for m, _ in stats])
        errs = np.array([0.0 if math.isnan(s) else s for _, s in stats])
        lows.append(np.nanmin(means - errs))
        ax.bar(x + (i - 1) * width, means, width, yerr=errs, capsize=2, label=metric)
    ax.set_xticks(x)
    ax.set_xticklabels([SHORT[k] for k in keys], fontsize=7)
    low = float(np.nanmin(lows))
    ax.set_ylim(max(0.0, low - 5.0) if math.isfinite(low) else 0.0, None)
    ax.set_ylabel("test, % (mean ± std over seeds)", fontsize=8)
    ax.set_title("SADCL ablation on MOM-30", fontsize=9)
    ax.legend(fontsize=7, ncol=3)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def tsne_figure(rows: dict[str, list[dict[str, Any]]], path: Path, *, n: int) -> str | None:
    """t-SNE of ``n`` label-level test features, same-budget baseline vs SADCL, first seed with both finished.

    Returns:
        A sentence for the report (None when no seed has both rows).
    """
    from sadcl.checkpoint import load_model
    from sadcl.data import build_dataset
    from sadcl.data.transforms import build_eval_transform
    from sadcl.embeddings import collect_label_features, plot_embedding_panels, separation_score

    by_seed = {k: {r["seed"]: r for r in rows.get(k, [])} for k in ("baseline", "sadcl")}
    common = [s for s in by_seed["sadcl"] if s in by_seed["baseline"]]
    if not common:
        return None
    seed = common[0]
    panels, scores, names = [], {}, None
    for key in ("baseline", "sadcl"):
        model, cfg, names = load_model(by_seed[key][seed]["checkpoint"])
        dataset = build_dataset(cfg.data, cfg.data.test_split, build_eval_transform(cfg))
        feats, labels = collect_label_features(model, dataset, n=n, batch_size=cfg.data.eval_batch_size or 64)
        scores[key] = separation_score(feats, labels) if len(np.unique(labels)) > 1 else float("nan")
        panels.append((f"{TITLES[key]}: silhouette {scores[key]:.3f}", feats, labels))
    plot_embedding_panels(panels, path, class_names=names or None, seed=0)
    return (
        f"t-SNE of {len(panels[0][1])} label-level features (image, true label) of MOM-30 test images, seed "
        f"{seed}, selected models: cosine silhouette same-budget baseline {scores['baseline']:.3f}, "
        f"SADCL {scores['sadcl']:.3f}."
    )


def _rel(path: Path, start: Path) -> str:
    return os.path.relpath(path.resolve(), start.resolve())


def report(
    args: argparse.Namespace,
    rows: dict[str, list[dict[str, Any]]],
    status: str,
    elapsed_s: float,
    tsne_note: str | None,
) -> str:
    """Write the bar chart and the ``ablation`` section of ``--benchmarks-md``; returns the section text."""
    md = Path(args.benchmarks_md)
    chart = Path(args.chart)
    has_chart = bar_chart(rows, chart)
    has_curves = curves_figure(Path(args.out), args.seeds, Path(args.curves))
    results_json(args, rows, Path(args.results_json))
    config = repo_relative(args.config)
    cfg = run_config(args, Path(args.out), args.seeds[0])  # the values every run used (flags or the config's)
    opts = cfg.data.options
    sizes = f"MOM-30 {opts.get('n_train')}/{opts.get('n_val')}/{opts.get('n_test')} train/val/test images"
    lines = [
        f"## {args.title} (`benchmarks/ablation.py`)",
        "",
        f"- Date and machine: {machine_line(args.threads)}",
        f"- Command: `{command_line()}`",
        f"- Config: `{config}` with overrides `{' '.join(base_overrides(args))}`; {sizes}; seeds "
        f"{' '.join(map(str, args.seeds))}; stage 1 {cfg.train.baseline_epochs} epochs, stage 2 "
        f"{cfg.train.epochs} epochs, prototype threshold {cfg.train.prototype_threshold}.",
        f"- Status: {status} (wall time of this invocation {elapsed_s / 60:.1f} min).",
        "- Protocol: per seed, one stage-1 run (`sadcl.train.run_training`, baseline stage) and one set of "
        "prototypes, shared by every stage-2 row; each row trains stage 2 from them with the same epochs and "
        "schedule. The baseline row keeps the contrastive model with both contrastive weights 0, so it has the "
        "same total budget as SADCL. Selection (best epoch, EMA or regular) on val only; numbers are the selected "
        "model on test (threshold 0.5 for CF1/OF1), mean ± sample std over the seeds listed per row.",
        "",
    ]
    if args.quick:
        lines += ["> **Quick smoke run** (tiny sizes): these numbers only show that the script works.", ""]
    lines += [
        table(rows),
        "",
        paired_sentence(rows),
        "",
        per_seed_table(rows),
        "",
        f"Per-seed numbers: `{_rel(Path(args.results_json), md.parent)}`.",
        "",
    ]
    if has_chart:
        lines += [f"![ablation]({_rel(chart, md.parent)})", ""]
    if has_curves:
        lines += [f"![val mAP by epoch]({_rel(Path(args.curves), md.parent)})", ""]
    if tsne_note:
        lines += [tsne_note, "", f"![t-SNE]({_rel(Path(args.tsne), md.parent)})", ""]
    text = "\n".join(lines)
    update_section(args.section, text, md)
    return text


# ----------------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(DEMO_CONFIG), help="run config (default: configs/mom30_demo.yaml)")
    p.add_argument("--out", default="runs/ablation", help="run directory (default: runs/ablation)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    p.add_argument(
        "--rows",
        nargs="+",
        default=None,
        help=f"stage-2 rows to run (default: the built-in {' '.join(r.key for r in ROWS)} plus every "
        "--row); stage 1 always runs",
    )
    p.add_argument(
        "--row",
        nargs="+",
        action="append",
        metavar="NAME_OR_KEY=VALUE",
        help="an extra row: its name, then config overrides, e.g. --row w30 loss.weight_sscl=30 "
        "loss.weight_pscl=5 (repeatable)",
    )
    p.add_argument("--section", default="ablation", help="BENCHMARKS.md section id (default: ablation)")
    p.add_argument("--title", default="Ablation on MOM-30", help="heading of the BENCHMARKS.md section")
    p.add_argument("--n-train", type=int, default=None, help="MOM-30 train images (default: the config's, 4000)")
    p.add_argument("--n-val", type=int, default=None, help="MOM-30 val images (default: the config's, 500)")
    p.add_argument("--n-test", type=int, default=None, help="MOM-30 test images (default: the config's, 1000)")
    p.add_argument("--baseline-epochs", type=int, default=None, help="stage-1 epochs (default: the config's, 4)")
    p.add_argument("--epochs", type=int, default=None, help="stage-2 epochs (default: the config's, 3)")
    p.add_argument(
        "--prototype-threshold",
        type=float,
        default=None,
        help="σ a positive needs to enter a prototype (default: the config's, the official 0.85)",
    )
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="extra config overrides for every run")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--tsne-n", type=int, default=2000, help="label-level features in the t-SNE (default: 2000)")
    p.add_argument("--no-tsne", action="store_true", help="skip the t-SNE figure")
    p.add_argument("--report-only", action="store_true", help="train nothing; rebuild the table and figures")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: resnet18 without weights at 32 px, 32/16/16 images, 1 + 1 epochs of 2 steps",
    )
    p.add_argument(
        "--benchmarks-md",
        default=None,
        help="markdown file whose section is rewritten. Given: the committed figures are written too "
        "(benchmarks/<section>.png, benchmarks/<section>_curves.png, "
        "benchmarks/results/<section>.json) unless --chart etc. say otherwise. Not given (default): "
        "everything goes into <out>, so a rerun never overwrites committed figures by surprise",
    )
    p.add_argument("--chart", default=None, help="bar chart (default: see --benchmarks-md)")
    p.add_argument("--curves", default=None, help="val mAP by epoch figure (default: see --benchmarks-md)")
    p.add_argument("--results-json", default=None, help="per-seed numbers (default: see --benchmarks-md)")
    p.add_argument("--tsne", default=None, help="t-SNE figure (default: see --benchmarks-md)")
    args = p.parse_args(argv)
    extra = register_rows(args.row)
    if args.rows is None:
        args.rows = [r.key for r in ROWS] + extra
    unknown = [k for k in args.rows if k not in ROW_BY_KEY]
    if unknown:
        p.error(f"--rows: unknown row(s) {unknown}; known: {' '.join(ROW_BY_KEY)}")
    if args.quick:
        args.n_train, args.n_val, args.n_test = (
            min(args.n_train or 32, 32),
            min(args.n_val or 16, 16),
            min(args.n_test or 16, 16),
        )
        args.baseline_epochs, args.epochs, args.tsne_n = 1, 1, min(args.tsne_n, 40)
        args.prototype_threshold = args.prototype_threshold or 0.3  # 2 random-init steps: nothing reaches 0.85
    out = Path(args.out)
    publish = args.benchmarks_md is not None and not args.quick
    figures = REPO_ROOT / "benchmarks" if publish else out
    sec = args.section
    args.benchmarks_md = args.benchmarks_md or str(out / "BENCHMARKS.md")
    args.chart = args.chart or str(CHART if publish and sec == "ablation" else figures / f"{sec}.png")
    args.curves = args.curves or str(figures / f"{sec}_curves.png")
    args.results_json = args.results_json or str((figures / "results" if publish else out) / f"{sec}.json")
    args.tsne = args.tsne or str(TSNE if publish and sec == "ablation" else figures / f"{sec}_tsne.png")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out)
    if any(out.glob("seed*/*/result.json")):
        logger.warning(
            "%s holds result.json files of the removed fallback trainer: they are ignored and those runs "
            "are trained again; a fresh --out is cleaner",
            out,
        )
    t_start = time.time()
    failed: list[str] = []
    todo = [] if args.report_only else tasks(args)
    if todo:
        from tqdm import tqdm

        bar = tqdm(todo, desc="ablation", unit="run", dynamic_ncols=True)
        broken_seeds: set[int] = set()
        for i, (seed, key) in enumerate(bar):
            bar.set_postfix_str(f"seed {seed} {key}")
            if seed in broken_seeds:
                failed.append(f"seed {seed} {key} (stage 1 failed)")
                continue
            try:
                if key == STAGE1:
                    run_stage1(args, seed)
                else:
                    run_row(args, seed, ROW_BY_KEY[key])
            except Exception as exc:  # one failed run must not cost the others; reported below and in the exit code
                logger.exception("seed %d %s failed", seed, key)
                failed.append(f"seed {seed} {key} ({type(exc).__name__}: {exc})")
                if key == STAGE1:
                    broken_seeds.add(seed)
            report(
                args, collect(out, args.seeds), f"running ({i + 1}/{len(todo)} runs done)", time.time() - t_start, None
            )
        bar.close()
    rows = collect(out, args.seeds)
    expected = len(args.seeds) * (1 + len(args.rows))
    done = sum(len(rows[k]) for k in (STAGE1, *args.rows))
    status = "complete" if done >= expected else f"partial: {done} of {expected} runs finished"
    if failed:
        status += "; failed: " + "; ".join(failed)
    tsne_note = None if args.no_tsne else tsne_figure(rows, Path(args.tsne), n=args.tsne_n)
    print(report(args, rows, status, time.time() - t_start, tsne_note))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
