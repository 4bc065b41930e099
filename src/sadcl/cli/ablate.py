"""``sadcl ablate``: does SADCL help on my data? The equal-budget comparison, paired over seeds."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from sadcl.ablate.rows import BUILTIN_ROWS, DEFAULT_ROWS, row_title

    p = sub.add_parser(
        name,
        help="equal-budget comparison over seeds: SADCL vs its same-budget baseline, the plain head, ...",
        description="Per seed: stage 1 once, then stage-2 rows from it and single-stage rows at the same total "
        "budget; selection on val, test once; paired differences with 95 % intervals, a verdict line, "
        "OUT/ablation.md, OUT/ablation.json and OUT/ablation.png. Resumable: run the same command again to "
        "continue. Rows: " + "; ".join(f"{k}: {row_title(r, None)}" for k, r in BUILTIN_ROWS.items()),
    )
    p.add_argument("--config", default=None, help="run config (default: the packaged MOM-30 demo config)")
    p.add_argument("--out", required=True, help="ablation directory (runs, report)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    p.add_argument(
        "--rows",
        nargs="+",
        default=None,
        help=f"rows to run (default: {' '.join(DEFAULT_ROWS)}, plus every --row)",
    )
    p.add_argument(
        "--row",
        nargs="+",
        action="append",
        metavar="NAME_OR_KEY=VALUE",
        help="a row of your own: its name, then config overrides (repeatable), e.g. --row w30 loss.weight_sscl=30",
    )
    p.add_argument("--title", default="", help="heading of the report")
    p.add_argument("--report-only", action="store_true", help="train nothing; rebuild the report from the runs")
    p.add_argument("--yes", action="store_true", help="do not wait 5 s after printing the time estimate")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides for every run (e.g. data.root=... model.num_classes=...); a row's own settings win",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import shlex
    import sys
    import time

    from sadcl.ablate import AblationPlan, estimate_seconds, resolve_rows, run_ablation
    from sadcl.ablate.report import write_report
    from sadcl.cli.train import default_config_path

    plan = AblationPlan(
        config=args.config or default_config_path(),
        overrides=list(args.overrides),
        seeds=list(args.seeds),
        rows=resolve_rows(args.rows, args.row),
        out=args.out,
    )
    command = "sadcl " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "sadcl ablate"
    failed: list[str] = []
    if not args.report_only:
        est = estimate_seconds(plan)
        if est["runs_left"]:
            print(
                f"sadcl ablate: {est['runs_left']} run(s) to train, about {est['train_images']:,.0f} training "
                f"images at ~{est['images_per_s']:.0f} images/s (a synthetic batch here): roughly "
                f"{est['seconds'] / 60:.0f} min (machines and loaders vary ~2x). Resumable: rerun to continue.",
                flush=True,
            )
            if not args.yes:
                time.sleep(5)
        failed = run_ablation(plan, after_run=lambda done, total: write_report(plan, command=command, title=args.title))
    write_report(plan, command=command, title=args.title)
    print((plan.out / "ablation.md").read_text())
    print(f"report: {plan.out / 'ablation.md'}, {plan.out / 'ablation.json'}, {plan.out / 'ablation.png'}")
    for line in failed:
        print(f"failed: {line}", file=sys.stderr)
    return 1 if failed else 0
