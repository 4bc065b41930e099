"""The equal-budget comparison as a BENCHMARKS.md section: a thin caller of ``sadcl.ablate`` (``sadcl ablate``).

Usage:
    python benchmarks/ablation.py --config configs/emoji.yaml --seeds 1 2 3 --rows baseline sadcl plain \
        --out runs/ablate_emoji --section ablation_emoji --title "Emoji" --benchmarks-md BENCHMARKS.md
    python benchmarks/ablation.py --quick --out /tmp/abl      # smoke run, tiny sizes, numbers meaningless
    python benchmarks/ablation.py ... --report-only           # rebuild the section from finished runs

Every run, row and statistic is the library's (``sadcl.ablate``: per seed stage 1 once, stage-2 rows from it,
single-stage rows at the same total budget, selection on val, test once, paired Δ with 95 % CI). This script adds
the publishing: with ``--benchmarks-md`` it rewrites that file's section ``--section`` and writes
``benchmarks/results/<section>.json`` and ``benchmarks/results/<section>.png``; without it everything stays in
``--out``, so a rerun never overwrites committed figures by surprise. ``--carry-from FILE`` keeps the rows of an
earlier results JSON whose runs are not in ``--out`` (e.g. rows of a study run in an earlier session, to which a new
row is added; ``--carry-rows`` names the ones to keep), marked as carried in the section.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, command_line, machine_line, repo_relative, update_section  # noqa: E402
from sadcl.ablate import BUILTIN_ROWS, DEFAULT_ROWS, AblationPlan, custom_row, resolve_rows, run_ablation  # noqa: E402
from sadcl.ablate import report as R  # noqa: E402
from sadcl.io import atomic_write_text  # noqa: E402

DEMO_CONFIG = REPO_ROOT / "configs" / "mom30_demo.yaml"
RESULTS = REPO_ROOT / "benchmarks" / "results"

QUICK_MODEL = [
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
"""A tiny model and MOM-30 at 32 px, 2 steps an epoch: smoke runs of the MOM-30 benchmarks (numbers meaningless)."""
QUICK_OVERRIDES = [
    *QUICK_MODEL,
    "data.options.n_train=32",
    "data.options.n_val=16",
    "data.options.n_test=16",
    "train.baseline_epochs=1",
    "train.epochs=1",
    "train.prototype_threshold=0.3",  # 2 random-init steps: nothing reaches 0.85
]


def runs_from_json(data: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Rows of a results JSON in the shape of :func:`sadcl.ablate.report.collect` (no curves, no checkpoints)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for key, row in (data.get("rows") or {}).items():
        out[key] = [
            {
                "seed": int(seed),
                "val_mAP": float(v["val_mAP"]),
                "test": {"mAP": v["test_mAP"], "CF1": v.get("test_CF1", math.nan), "OF1": v.get("test_OF1", math.nan)},
                "best_epoch": v.get("best_epoch"),
                "selected": v.get("selected"),
                "minutes": v.get("minutes") if v.get("minutes") is not None else math.nan,
                "images_per_s": math.nan,
                "curve": [],
                **({"kept_stage1": v["kept_stage1"]} if "kept_stage1" in v else {}),
            }
            for seed, v in sorted(row.get("seeds", {}).items(), key=lambda kv: int(kv[0]))
        ]
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(DEMO_CONFIG), help="run config (default: configs/mom30_demo.yaml)")
    p.add_argument("--out", default="runs/ablation", help="ablation directory (default: runs/ablation)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rows", nargs="+", default=None, help=f"rows (default: {' '.join(DEFAULT_ROWS)} + every --row)")
    p.add_argument("--row", nargs="+", action="append", metavar="NAME_OR_KEY=VALUE", help="a row of your own")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run")
    p.add_argument("--section", default="ablation", help="BENCHMARKS.md section id (default: ablation)")
    p.add_argument("--title", default="Ablation", help="heading of the section")
    p.add_argument("--benchmarks-md", default=None, help="publish: rewrite this file's section and the committed JSON")
    p.add_argument("--carry-from", default=None, help="a results JSON whose rows missing in --out are kept")
    p.add_argument("--carry-rows", nargs="+", default=None, help="carry only these rows of --carry-from")
    p.add_argument("--report-only", action="store_true", help="train nothing; rebuild the section")
    p.add_argument("--quick", action="store_true", help="smoke run: resnet18 without weights at 32 px, 2 steps")
    args = p.parse_args(argv)
    try:
        rows = resolve_rows(args.rows, args.row)
    except ValueError as e:
        p.error(str(e))
    args.plan = AblationPlan(
        config=args.config,
        overrides=list(args.set),
        seeds=args.seeds,
        rows=rows,
        out=Path(args.out),
        extra=QUICK_OVERRIDES if args.quick else [],
    )
    return args


def publish(args: argparse.Namespace, status: str) -> str:
    """Write the report into ``--out`` and, with ``--benchmarks-md``, the section, JSON and figure; returns the
    section text."""
    plan = args.plan
    runs = R.collect(plan)
    carried: list[str] = []
    if args.carry_from and Path(args.carry_from).is_file():
        old = runs_from_json(json.loads(Path(args.carry_from).read_text()))
        if args.carry_rows:
            missing = sorted(set(args.carry_rows) - set(old))
            if missing:
                raise SystemExit(f"--carry-rows: {args.carry_from} has no row {missing}; it has {sorted(old)}")
            old = {k: v for k, v in old.items() if k in args.carry_rows}
        for key, rs in old.items():
            have = {r["seed"] for r in runs.get(key, [])}
            add = [r for r in rs if r["seed"] in plan.seeds and r["seed"] not in have]
            if add:
                runs[key] = sorted([*runs.get(key, []), *add], key=lambda r: r["seed"])
                carried.append(key)
        if carried and runs.get(R.STAGE1) and runs.get("sadcl"):
            runs[R.GUARDED] = R.guarded_runs(runs[R.STAGE1], runs["sadcl"])
        for key in old:  # rows that are not in this invocation's plan keep their place in the report
            if key not in {r.key for r in plan.rows} and key not in (R.STAGE1, R.GUARDED):
                plan.rows.append(BUILTIN_ROWS.get(key) or custom_row(key, ()))
    publish_to = Path(args.benchmarks_md) if args.benchmarks_md and not args.quick else None
    folder = RESULTS if publish_to else plan.out
    figure = folder / f"{args.section}.png"
    has_figure = R.figure(plan, runs, figure, title=args.title)
    data = R.results_json(plan, runs, command=command_line())
    data["config"] = repo_relative(args.config)  # never this machine's path in a committed file
    data["status"] = status
    data["carried_rows"] = carried
    atomic_write_text(folder / f"{args.section}.json", json.dumps(data, indent=1, allow_nan=True) + "\n")
    md_path = publish_to or plan.out / "BENCHMARKS.md"
    lines = [
        f"## {args.title} (`benchmarks/ablation.py`)",
        "",
        f"- Date and machine: {machine_line()}",
        f"- Command: `{command_line()}`",
        f"- Config: `{repo_relative(args.config)}`"
        + (f" with `{' '.join(args.set)}`" if args.set else "")
        + f"; seeds {' '.join(map(str, plan.seeds))}. Status: {status}.",
        "- Protocol (`sadcl.ablate`): per seed one stage-1 run and its prototypes shared by every stage-2 row "
        "(same epochs and schedule; the baseline row is stage 2 with both contrastive weights 0); single-stage rows "
        "train `baseline_epochs + epochs` epochs in one go. Selection on val only; the selected weights are "
        "tested once. Stage-2 rows run without the stage-2 guard; the guarded row is what `sadcl train` ships.",
    ]
    if carried:
        lines.append(
            f"- Rows carried from `{repo_relative(args.carry_from)}` (run in an earlier session with the config "
            f"as it was then, each row's own settings as titled; their numbers as committed): {', '.join(carried)}."
        )
    lines += ["", R.markdown(plan, runs, figure_path=os.path.relpath(figure, md_path.parent) if has_figure else None)]
    lines.append(f"Per-seed numbers: `{os.path.relpath(folder / f'{args.section}.json', md_path.parent)}`.")
    text = "\n".join(lines)
    update_section(args.section, text, md_path)
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    failed: list[str] = []
    if not args.report_only:
        failed = run_ablation(args.plan, after_run=lambda done, total: publish(args, f"running ({done}/{total})"))
    status = "complete" if not failed else "failed: " + "; ".join(failed)
    if args.report_only:
        status = "rebuilt from the finished runs (--report-only)"
    print(publish(args, status))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
