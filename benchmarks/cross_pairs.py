"""Paired comparisons across study sections (BENCHMARKS.md section ``cross_pairs``).

Usage:
    python benchmarks/cross_pairs.py              # print the section
    python benchmarks/cross_pairs.py --publish    # also rewrite the BENCHMARKS.md section and its JSON

Some questions pair rows that different study phases trained: the README's own-data config (ML-Decoder with SADCL's
two stages, section ``heads_ml_decoder_*``) against the plain head (``ablation_emoji`` / ``study_demo``), SADCL in one
stage against Query2Label straight through, an idea's stage-2 row against the recipe. Every phase trains each seed
with ``train.seed = S`` on the same data, so rows of two phases pair by seed as rows of one do. This script reads
only the committed per-seed results (``benchmarks/results/*.json``, nothing is trained) and gives each pair's paired
Δ test mAP with its 95 % t interval, p and the seeds it is ahead on, and the Δ val mAP the decision rules read.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, command_line, machine_line, update_section  # noqa: E402
from sadcl.ablate.stats import interval_text, paired_stats  # noqa: E402
from sadcl.io import atomic_write_text  # noqa: E402

RESULTS = REPO_ROOT / "benchmarks" / "results"

OWN = "`configs/own_data.yaml` as `sadcl train` ships it (ML-Decoder, SADCL's two stages, guard on)"
OWN_DEMO = "ML-Decoder with SADCL's two stages, guard on (`own_data.yaml`'s model and schedule, MOM-30's data settings)"
SHIPPED = "Query2Label + SADCL as `sadcl train` ships it (guard on)"
ASL = "stage 2 with stage 1's ASL"
Side = tuple[str, str]  # (section, row)
Comparison = tuple[str, Side, Side] | tuple[str, Side, Side, range]  # (what, a, b[, only these seeds])


def head_pairs(own: str, base: str, shipped_section: str) -> list[Comparison]:
    """The own-data config, ML-Decoder in one stage, the shipped Query2Label pipeline and the plain head, paired on one
    benchmark (``base``: ``emoji`` or ``demo``, as in the section names; ``shipped_section``: the section with the
    shipped pipeline and the plain head)."""
    own_run, one_stage = (f"heads_ml_decoder_{base}", "sadcl_guarded"), (f"heads_{base}", "ml_decoder")
    shipped, plain = (shipped_section, "sadcl_guarded"), (shipped_section, "plain")
    return [
        (f"{own} − the plain head", own_run, plain),
        (f"{own} − {SHIPPED}", own_run, shipped),
        (f"{own} − ML-Decoder in one stage", own_run, one_stage),
        (f"ML-Decoder in one stage − {SHIPPED}", one_stage, shipped),
        ("ML-Decoder in one stage − the plain head", one_stage, plain),
    ]


def stage2_change_pairs(what: str, section: str, row: str, recipe: Side) -> list[Comparison]:
    """A change to stage 2 as a whole, its recipe ``row`` and same-budget baseline ``{row}_base`` in ``section``:
    the recipe against the recipe as it is (``recipe``), and its SADCL terms against its own baseline."""
    return [
        (f"{what}: recipe − the recipe", (section, row), recipe),
        (f"{what}: recipe − its same-budget baseline", (section, row), (section, f"{row}_base")),
    ]


COMPARISONS: dict[str, list[Comparison]] = {
    # benchmark: [(what, (section, row) minus (section, row)), ...]
    "emoji": [
        *head_pairs(OWN, "emoji", "ablation_emoji"),
        ("SADCL in one stage (prototypes follow the model) − Query2Label straight through",
         ("one_stage_emoji", "one_sadcl"), ("ablation_emoji", "straight")),
        ("prototypes that follow the model − the recipe", ("follow_emoji", "follow"), ("ablation_emoji", "sadcl")),
        *stage2_change_pairs("stage 2 at half the learning rate", "half_lr_emoji", "half", ("ablation_emoji", "sadcl")),
        *stage2_change_pairs(ASL, "stage2_asl_emoji", "asl", ("ablation_emoji", "sadcl")),
        (f"{ASL}: recipe − the recipe, the replication's seeds 9-16 only",
         ("stage2_asl_emoji", "asl"), ("ablation_emoji", "sadcl"), range(9, 17)),
        *stage2_change_pairs(f"ML-Decoder, {ASL}", "heads_ml_decoder_asl_emoji", "asl",
                             ("heads_ml_decoder_asl_emoji", "sadcl")),
    ],
    "MOM-30 (demo regime)": [
        *head_pairs(OWN_DEMO, "demo", "study_demo"),
        ("prototypes that follow the model − the recipe", ("follow_demo", "follow"), ("study_demo", "sadcl")),
        *stage2_change_pairs(ASL, "stage2_asl_demo", "asl", ("study_demo", "sadcl")),
        *stage2_change_pairs(f"ML-Decoder, {ASL}", "heads_ml_decoder_asl_demo", "asl",
                             ("heads_ml_decoder_asl_demo", "sadcl")),
    ],
}  # fmt: skip


@functools.cache
def _rows(path: Path) -> dict | None:
    """The ``rows`` of one committed results file, read once per run (most sections are read by several pairs)."""
    return json.loads(path.read_text())["rows"] if path.is_file() else None


def seeds_of(section: str, row: str) -> dict[str, dict[str, float]] | None:
    """``{seed: {"val_mAP", "test_mAP", ...}}`` of one committed row (None: the section or row does not exist)."""
    rows = _rows(RESULTS / f"{section}.json")
    return None if rows is None else rows.get(row, {}).get("seeds")


def pair(a: Side, b: Side, only: range | None = None) -> dict | None:
    """Paired statistics of ``a`` minus ``b`` over the seeds both have (``only``: those of them in this range, e.g.
    the fresh seeds of a replication), test and val (None: one was not run)."""
    ra, rb = seeds_of(*a), seeds_of(*b)
    if not ra or not rb:
        return None
    seeds = sorted((s for s in set(ra) & set(rb) if only is None or int(s) in only), key=int)
    if not seeds:
        return None
    return {
        "seeds": seeds,
        **{m: paired_stats([ra[s][f"{m}_mAP"] - rb[s][f"{m}_mAP"] for s in seeds]) for m in ("test", "val")},
    }


def _mean_ci(st: dict) -> str:
    return f"{st['mean']:+.2f}{interval_text(st)}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--publish", action="store_true", help="rewrite the BENCHMARKS.md section and its JSON")
    args = p.parse_args(argv)
    lines = [
        "## Paired comparisons across the study's sections (`benchmarks/cross_pairs.py`)",
        "",
        f"- Date and machine: {machine_line()} (nothing trained: the committed per-seed results are read)",
        f"- Command: `{command_line()}`",
        "- Rows of two sections pair by seed (every run of seed S has `train.seed = S` on the same data); the "
        "section and row of each side are named. Selection on val only; each run's test split was read once.",
        "",
    ]
    data: dict[str, list[dict]] = {}
    for bench, comparisons in COMPARISONS.items():
        lines += [
            f"**{bench}**",
            "",
            "| comparison | a (section: row) | b (section: row) | seeds | Δ test mAP a − b (95 % CI), p, a better "
            "| Δ val mAP a − b (95 % CI) |",
            "|---|---|---|---|---|---|",
        ]
        data[bench] = []
        for what, a, b, *only in comparisons:
            st = pair(a, b, *only)
            where = f"| {what} | `{a[0]}`: {a[1]} | `{b[0]}`: {b[1]} |"
            if st is None:
                lines.append(f"{where} – | not run | – |")
                continue
            t, v = st["test"], st["val"]
            p_value = "" if math.isnan(t["p"]) else (", p < 0.001" if t["p"] < 0.001 else f", p = {t['p']:.3f}")
            lines.append(f"{where} {t['n']} | {_mean_ci(t)}{p_value}, {t['wins']}/{t['n']} | {_mean_ci(v)} |")
            data[bench].append({"what": what, "a": list(a), "b": list(b), **st})
        lines.append("")
    text = "\n".join(lines).rstrip() + "\n"
    print(text)
    if args.publish:
        update_section("cross_pairs", text)
        payload = {"command": command_line(), "comparisons": data}
        atomic_write_text(RESULTS / "cross_pairs.json", json.dumps(payload, indent=1, allow_nan=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
