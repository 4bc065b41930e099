"""Partial labels on MOM-30: ``loss.unknown_mode=ignore`` vs ``negative`` with 50 % of the training labels known, and
the default SADCL recipe's test mAP over the known fraction.

Usage:
    python benchmarks/partial_labels.py                                   # 10 runs, resumable, about 45 min on 2 cores
    python benchmarks/partial_labels.py --benchmarks-md BENCHMARKS.md     # also rewrite the BENCHMARKS.md section
    python benchmarks/partial_labels.py --report-only                     # rebuild the report from finished runs
    python benchmarks/partial_labels.py --quick --out /tmp/pl --seeds 0 --fractions 0.5 1.0   # smoke run

Protocol. Every run is the full two-stage recipe of ``--config`` (stage 1, prototypes, stage 2) through
``sadcl.training.train.run_training``, in a small regime (``SMALL``: the demo model at 64 px on the demo's MOM-30, 3 + 2
epochs) so that the 10 runs fit in about 45 minutes on 2 idle cores. Only the training split is partially labelled:
``data.options.known_fraction=F`` with ``known_seed=S`` hides the same entries for both modes of seed S (the pairing);
validation (model selection) and test stay fully labelled.

1. Modes: F = 0.5, ``unknown_mode`` ignore and negative, seeds ``--seeds`` (default 0 1 2): the paired difference
   ignore − negative of the test mAP, its mean, sample std, 95 % t interval and p-value, and a per-seed table.
2. Curve: ``unknown_mode=ignore`` (the default) at every ``--fractions`` value (default 0.1 0.3 0.5 0.7 1.0) for
   ``--curve-seed`` (default the first seed; its F = 0.5 run is the mode comparison's).

A run whose ``sadcl/results.json`` holds test metrics is skipped; an interrupted one resumes from its ``last.pt``.
Outputs: ``benchmarks/results/partial_labels.json``, ``benchmarks/results/partial_labels.png`` (``--quick``: inside
``--out``) and, only with ``--benchmarks-md``, that file's ``partial_labels`` section.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, command_line, machine_line, repo_relative, update_section  # noqa: E402
from ablation import QUICK_MODEL as QUICK_OVERRIDES  # noqa: E402
from sadcl.ablate import paired_stats  # noqa: E402
from sadcl.io import atomic_write_text, read_json  # noqa: E402

logger = logging.getLogger("partial_labels")

DEMO_CONFIG = REPO_ROOT / "configs" / "mom30_demo.yaml"
RESULTS = REPO_ROOT / "benchmarks" / "results" / "partial_labels.json"
FIGURE = RESULTS.parent / "partial_labels.png"
MODES = ("ignore", "negative")
MODE_FRACTION = 0.5
SMALL = ["model.img_size=64", "train.baseline_epochs=3", "train.epochs=2"]
"""The benchmark regime on top of the config: the demo model at 64 px (its MOM-30 images' own size, 3x fewer pixels
than the demo's 112) on the demo's cached MOM-30 (4 000 / 500 / 1 000 images, nothing to generate), 3 + 2 epochs.
Per run that is 20 000 training and about 13 000 evaluation images: at the demo's measured 75 images/s at 112 px,
scaled to 64 px, about 3 minutes on 2 idle cores, so 10 runs take 30-45 minutes. (A 25-step probe on this 2-core
machine shared with other jobs ran at 5-8 images/s: load, not the regime; size from an idle machine.)"""
QUICK = [*QUICK_OVERRIDES, "data.options.n_train=96", "data.options.n_val=32", "data.options.n_test=32"]
"""``--quick``: tiny model and data, two steps per epoch."""


def run_dir(out: Path, mode: str, fraction: float, seed: int) -> Path:
    return out / f"{mode}_known{round(fraction * 100):03d}" / f"seed{seed}"


def runs(args: argparse.Namespace) -> list[tuple[str, float, int]]:
    """(mode, fraction, seed) of every run, mode comparison first (the headline survives a cut-short session)."""
    todo = [(m, MODE_FRACTION, s) for s in args.seeds for m in MODES]
    todo += [("ignore", f, args.curve_seed) for f in args.fractions if ("ignore", f, args.curve_seed) not in todo]
    return todo


def run_config(args: argparse.Namespace, mode: str, fraction: float, seed: int) -> Any:
    from sadcl.config import load_config

    overrides = [
        *(QUICK if args.quick else SMALL),
        "data.options.progress=false",
        "train.progress=false",
        "train.tensorboard=false",
        f"train.seed={seed}",
        f"train.output_dir={run_dir(Path(args.out), mode, fraction, seed)}",
        f"loss.unknown_mode={mode}",
        *([f"data.options.known_fraction={fraction}", f"data.options.known_seed={seed}"] if fraction < 1 else []),
        *(args.set or []),
    ]
    return load_config(args.config, overrides)


def finished(path: Path) -> dict[str, Any] | None:
    res = read_json(path / "sadcl" / "results.json")
    return res if isinstance(res, dict) and "test" in res else None


def collect(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One record per finished run: mode, fraction, seed, test/val mAP of both stages."""
    out = []
    for mode, fraction, seed in runs(args):
        d = run_dir(Path(args.out), mode, fraction, seed)
        res = finished(d)
        if res is None:
            continue
        stage1 = read_json(d / "baseline" / "results.json") or {}
        val = (res.get("val") or {}).get(res.get("selected") or "regular", {})
        out.append(
            {
                "mode": mode,
                "known_fraction": fraction,
                "seed": seed,
                "test_mAP": res["test"]["mAP"],
                "val_mAP": val.get("mAP"),
                "stage1_test_mAP": (stage1.get("test") or {}).get("mAP"),
                "train_seconds": res.get("train_seconds", 0.0) + stage1.get("train_seconds", 0.0),
            }
        )
    return out


def _cell(values: list[float]) -> str:
    import numpy as np

    if not values:
        return "–"
    arr = np.asarray(values, dtype=np.float64)
    return f"{arr.mean():.2f}" if len(arr) < 2 else f"{arr.mean():.2f} ± {arr.std(ddof=1):.2f}"


def summarize(records: list[dict[str, Any]], curve_seed: int) -> dict[str, Any]:
    at = {m: {r["seed"]: r for r in records if r["mode"] == m and r["known_fraction"] == MODE_FRACTION} for m in MODES}
    seeds = sorted(set(at["ignore"]) & set(at["negative"]))
    deltas = [at["ignore"][s]["test_mAP"] - at["negative"][s]["test_mAP"] for s in seeds]
    curve = sorted(
        (r for r in records if r["mode"] == "ignore" and r["seed"] == curve_seed), key=lambda r: r["known_fraction"]
    )
    return {
        "modes": {m: [at[m][s]["test_mAP"] for s in sorted(at[m])] for m in MODES},
        "paired_seeds": seeds,
        "paired_delta": paired_stats(deltas),
        "per_seed": [
            {"seed": s, "ignore": at["ignore"][s]["test_mAP"], "negative": at["negative"][s]["test_mAP"], "delta": d}
            for s, d in zip(seeds, deltas)
        ],
        "curve": [
            {"known_fraction": r["known_fraction"], "test_mAP": r["test_mAP"], "stage1_test_mAP": r["stage1_test_mAP"]}
            for r in curve
        ],
    }


def figure(summary: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no figure")
        return False
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    for row in summary["per_seed"]:
        a.plot([0, 1], [row["negative"], row["ignore"]], "o-", color="0.5")
    a.set_xticks([0, 1], ["negative", "ignore"])
    a.set_xlim(-0.4, 1.4)
    a.set_title(f"{round(MODE_FRACTION * 100)} % known: test mAP per seed")
    a.set_ylabel("test mAP")
    if summary["curve"]:
        xs = [100 * r["known_fraction"] for r in summary["curve"]]
        b.plot(xs, [r["test_mAP"] for r in summary["curve"]], "o-", label="SADCL (stage 2)")
        s1 = [r["stage1_test_mAP"] for r in summary["curve"]]
        if all(v is not None for v in s1):
            b.plot(xs, s1, "s--", label="stage 1 (baseline)")
        b.legend()
    b.set_xlabel("training labels known (%)")
    b.set_title("unknown_mode=ignore")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def report(args: argparse.Namespace, summary: dict[str, Any], status: str, seconds: float) -> str:
    st = summary["paired_delta"]
    ci = (
        f"{st['mean']:+.2f} [{st['ci95_low']:+.2f}, {st['ci95_high']:+.2f}] (95 % t interval, p={st['p']:.3f}, "
        f"n={st['n']})"
        if st["n"] > 1
        else (f"{st['mean']:+.2f} (n=1)" if st["n"] else "–")
    )
    lines = [
        "## Partial labels on MOM-30 (`benchmarks/partial_labels.py`)",
        "",
        f"Status: {status}. {machine_line()}; {seconds / 60:.1f} min in this invocation.",
        "",
        f"Command: `{command_line()}`",
        "",
        f"Training split {round(MODE_FRACTION * 100)} % known (seeded per seed, same entries for both modes), "
        "validation (model selection) and test fully labelled; the config's two-stage SADCL recipe in the small "
        "regime of the script. Test mAP, mean ± sample std over seeds:",
        "",
        "| unknown_mode | test mAP |",
        "|---|---|",
        *(f"| {m} | {_cell(summary['modes'][m])} |" for m in MODES),
        "",
        f"Paired ignore − negative: {ci}.",
        "",
        "| seed | ignore | negative | Δ |",
        "|---|---|---|---|",
        *(
            f"| {r['seed']} | {r['ignore']:.2f} | {r['negative']:.2f} | {r['delta']:+.2f} |"
            for r in summary["per_seed"]
        ),
        "",
        f"Known-fraction curve (`unknown_mode=ignore`, seed {args.curve_seed}):",
        "",
        "| known | stage 1 test mAP | SADCL test mAP |",
        "|---|---|---|",
        *(
            f"| {round(100 * r['known_fraction'])} % | "
            f"{'–' if r['stage1_test_mAP'] is None else format(r['stage1_test_mAP'], '.2f')} | {r['test_mAP']:.2f} |"
            for r in summary["curve"]
        ),
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(DEMO_CONFIG), help="run config (default: configs/mom30_demo.yaml)")
    p.add_argument("--out", default="runs/partial_labels", help="run directory (default: runs/partial_labels)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="mode-comparison seeds (default: 0 1 2)")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 1.0], help="curve points")
    p.add_argument("--curve-seed", type=int, default=None, help="the curve's seed (default: the first seed)")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="extra config overrides for every run")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, numbers meaningless (smoke test)")
    p.add_argument("--report-only", action="store_true", help="train nothing; rebuild the report")
    p.add_argument("--benchmarks-md", default=None, help="rewrite this file's partial_labels section")
    p.add_argument("--results-json", default=None, help=f"default {repo_relative(RESULTS)} (--quick: in --out)")
    p.add_argument("--figure", default=None, help=f"default {repo_relative(FIGURE)} (--quick: in --out)")
    args = p.parse_args(argv)
    bad = [f for f in args.fractions if not 0 < f <= 1]
    if bad:
        p.error(f"--fractions must lie in (0, 1], got {bad}")
    args.curve_seed = args.seeds[0] if args.curve_seed is None else args.curve_seed
    out = Path(args.out)
    args.results_json = args.results_json or str(out / "partial_labels.json" if args.quick else RESULTS)
    args.figure = args.figure or str(out / "partial_labels.png" if args.quick else FIGURE)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.time()
    failed: list[str] = []
    todo = [] if args.report_only else runs(args)
    for i, (mode, fraction, seed) in enumerate(todo):
        d = run_dir(Path(args.out), mode, fraction, seed)
        if finished(d):
            continue
        logger.info("run %d/%d: %s, %d %% known, seed %d", i + 1, len(todo), mode, round(fraction * 100), seed)
        try:
            from sadcl.training.train import run_training

            run_training(run_config(args, mode, fraction, seed), resume=True)
        except Exception as exc:  # one failed run must not cost the others; reported and in the exit code
            logger.exception("%s failed", d)
            failed.append(f"{repo_relative(d)} ({type(exc).__name__}: {exc})")
    records = collect(args)
    summary = summarize(records, args.curve_seed)
    expected = len(runs(args))
    status = "complete" if len(records) == expected else f"partial: {len(records)} of {expected} runs finished"
    if failed:
        status += "; failed: " + "; ".join(failed)
    text = report(args, summary, status, time.time() - t0)
    payload = {
        "command": command_line(),
        "machine": machine_line(),
        "status": status,
        "regime": QUICK if args.quick else SMALL,
        "config": repo_relative(args.config),
        "runs": records,
        "summary": summary,
    }
    Path(args.results_json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.results_json), json.dumps(_finite(payload), indent=2) + "\n")
    if figure(summary, Path(args.figure)):
        text += f"\n![partial labels]({os.path.relpath(args.figure, Path(args.benchmarks_md or '.').parent)})\n"
    if args.benchmarks_md:
        update_section("partial_labels", text, Path(args.benchmarks_md))
    print(text)
    return 1 if failed else 0


def _finite(x: Any) -> Any:
    """``x`` with every non-finite float replaced by None (strict JSON)."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x


if __name__ == "__main__":
    raise SystemExit(main())
