"""The emoji benchmark itself: its counts and a difficulty table (BENCHMARKS.md section ``emoji_benchmark``).

Usage:
    python benchmarks/emoji_benchmark.py                    # build (cached) and print the section
    python benchmarks/emoji_benchmark.py --publish          # also rewrite the BENCHMARKS.md section

Builds the benchmark with its default parameters (``sadcl data emoji``; cached in the sadcl cache) and reports per
split the base emoji, images and labels per image, then per class the number of base emoji that carry the tag, the
test prevalence and the test AP of three predictors: the label prior (a constant score per class: its AP is the
class's test prevalence), the plain head and Query2Label (stage 1 + its same-budget stage 2), each the mean over
the seeds of ``benchmarks/results/ablation_emoji.json`` when it exists (their per-class AP from the runs' results).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, command_line, machine_line, update_section  # noqa: E402
from sadcl.config import DataConfig  # noqa: E402
from sadcl.data import build_dataset  # noqa: E402
from sadcl.data.emoji import dataset_dir  # noqa: E402
from sadcl.io import read_json  # noqa: E402

RESULTS = REPO_ROOT / "benchmarks" / "results" / "ablation_emoji.json"


def per_class_ap(runs_dir: Path, row: str, stage: str, seeds: list[str]) -> dict[str, dict[str, float]]:
    """``{seed: {class: test AP}}`` of one row, for the seeds whose runs in ``runs_dir`` have it."""
    out = {}
    for s in seeds:
        res = read_json(runs_dir / f"seed{s}" / row / stage / "results.json") or {}
        if res.get("test_per_class_AP"):
            out[s] = res["test_per_class_AP"]
    return out


def mean_ap(per_seed: dict[str, dict[str, float]], seeds: list[str]) -> dict[str, float]:
    """Mean test AP per class over ``seeds`` (a class's missing APs left out)."""
    acc: dict[str, list[float]] = {}
    for s in seeds:
        for name, ap in per_seed[s].items():
            if ap is not None:
                acc.setdefault(name, []).append(ap)
    return {k: float(np.mean(v)) for k, v in acc.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs/study/emoji", help="the emoji ablation's run directory (per-class AP)")
    p.add_argument("--publish", action="store_true", help="rewrite the BENCHMARKS.md section")
    args = p.parse_args(argv)
    cfg = DataConfig(format="emoji")
    test = build_dataset(cfg, "test")
    root = dataset_dir(cfg)
    meta = json.loads((root / "meta.json").read_text())
    prevalence = test.targets.mean(0).numpy() * 100
    summary = (read_json(RESULTS) or {}).get("rows", {})
    seeds = sorted(
        set(summary.get("plain", {}).get("seeds", {})) & set(summary.get("baseline", {}).get("seeds", {})), key=int
    )
    # The seeds both rows ran (the committed results) and whose runs are here (per-class AP): one set for all figures.
    plain_ap = per_class_ap(Path(args.runs), "plain", "baseline", seeds)
    q2l_ap = per_class_ap(Path(args.runs), "baseline", "sadcl", seeds)
    seeds = [s for s in seeds if s in plain_ap and s in q2l_ap]
    plain, q2l = mean_ap(plain_ap, seeds), mean_ap(q2l_ap, seeds)

    def mean_map(row: str) -> str:  # over the seeds of the per-class table (rows with more seeds keep to those)
        by_seed = summary.get(row, {}).get("seeds", {})
        values = [by_seed[s]["test_mAP"] for s in seeds if s in by_seed]
        return f"{np.mean(values):.2f} ({len(values)} seeds)" if values else "–"

    lines = [
        "## The emoji benchmark (`benchmarks/emoji_benchmark.py`)",
        "",
        f"- Date and machine: {machine_line()}",
        f"- Command: `{command_line()}` (the data: `sadcl data emoji --out DIR`, or `data.format: emoji`)",
        "- Sources (npm, SHA-256 pinned in `sadcl.data.emoji.SOURCES`): "
        + ", ".join(f"`{k}@{v['version']}`" for k, v in meta["sources"].items())
        + ". Licences: "
        + "; ".join(meta["licenses"].values())
        + ".",
        f"- Parameters: {meta['params']}. Classes: the CLDR keywords on at least {meta['params']['min_emoji']} base "
        f"emoji that both vendors draw: **{meta['classes']} classes**. Images: one emoji of one vendor in one skin "
        "tone, 64 px on white. The split is by base emoji (iterative stratification): no test emoji is seen in "
        "training in any vendor or skin tone.",
        "",
        "| split | base emoji | images | labels / image | fewest base emoji of a class |",
        "|---|---|---|---|---|",
        *(
            f"| {s} | {v['base_emoji']} | {v['images']} | {v['labels_per_image']:.2f} | {v['min_class_base_emoji']} |"
            for s, v in sorted(meta["stats"].items(), key=lambda kv: ("train", "val", "test").index(kv[0]))
        ),
        "",
        f"Difficulty: test mAP of the label prior {prevalence.mean():.2f}; plain head {mean_map('plain')}; "
        f"Query2Label stage 1 {mean_map('stage1')}, and with its same-budget stage 2 {mean_map('baseline')} "
        f"(`benchmarks/results/ablation_emoji.json`, seeds {', '.join(seeds)}: those both rows ran). Per class (test "
        "AP, mean over those seeds; Query2Label: stage 1 + its same-budget stage 2; sorted by the plain head's AP):",
        "",
        "| class | base emoji | test prevalence % | prior AP | plain head AP | Query2Label (same budget) AP |",
        "|---|---|---|---|---|---|",
    ]
    names = list(test.class_names)
    order = sorted(range(len(names)), key=lambda i: plain.get(names[i], -1.0))
    for i in order:
        n = names[i]
        lines.append(
            f"| {n} | {meta['class_base_emoji'][n]} | {prevalence[i]:.1f} | {prevalence[i]:.1f} | "
            f"{plain[n]:.1f} | {q2l[n]:.1f} |"
            if n in plain and n in q2l
            else f"| {n} | {meta['class_base_emoji'][n]} | {prevalence[i]:.1f} | {prevalence[i]:.1f} | – | – |"
        )
    text = "\n".join(lines)
    print(text)
    if args.publish:
        update_section("emoji_benchmark", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
