"""What an ablation found: per-seed numbers, paired differences with 95 % intervals, one verdict line, Markdown, JSON
and a figure. Everything is read back from the runs' ``results.json`` / ``metrics.json`` (nothing is kept in memory
between invocations), so a report can be rebuilt at any time.

The guarded row ``sadcl_guarded`` is not a run: it is what ``sadcl train`` ships with ``train.stage2_guard`` on, i.e.
per seed the SADCL row unless no stage-2 epoch beat stage 1's selected weights on val, then stage 1's model (the
same weights and val split give the guard the same val score as stage 1's own selection).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path
from typing import Any

from sadcl.ablate.rows import STAGE1, Row, head_name, row_title
from sadcl.ablate.runner import SECONDS, AblationPlan, run_dir, stage_dir
from sadcl.ablate.stats import interval_text, mean_std, paired_stats
from sadcl.escape import markdown_text
from sadcl.io import atomic_write_text, read_json

__all__ = [
    "GUARDED",
    "collect",
    "guarded_runs",
    "figure",
    "markdown",
    "per_seed_table",
    "plan_head",
    "results_json",
    "table",
    "validated_mean",
    "verdict",
    "write_report",
]

GUARDED = "sadcl_guarded"
METRICS = ("mAP", "CF1", "OF1")


def _num(x: Any) -> float:
    return math.nan if x is None else float(x)


def _best_val(row: dict[str, Any]) -> float:
    v = row.get("val") or {}
    return max(_num((v.get("regular") or {}).get("mAP")), _num((v.get("ema") or {}).get("mAP")))


def _run(stage: Path, seed: int) -> dict[str, Any] | None:
    res = read_json(stage / "results.json")
    if not (isinstance(res, dict) and isinstance(res.get("test"), dict)):
        return None
    val = res.get("val") or {}
    history = read_json(stage / "metrics.json") or []
    return {
        "seed": seed,
        "val_mAP": _num((val.get(res.get("selected")) or {}).get("mAP")),
        "test": {m: _num(res["test"].get(m)) for m in METRICS},
        "best_epoch": res.get("best_epoch"),
        "selected": res.get("selected"),
        "minutes": _num((read_json(stage / SECONDS) or {}).get("seconds")) / 60,
        "images_per_s": _num(res.get("train_images_per_s")),
        "curve": [_best_val(r) if "val" in r else math.nan for r in history],
        "checkpoint": str(stage / "best.pt"),
    }


def collect(plan: AblationPlan) -> dict[str, list[dict[str, Any]]]:
    """The finished runs: ``{key: [run, ...]}`` (``stage1``, every row, and ``sadcl_guarded`` when computable)."""
    out: dict[str, list[dict[str, Any]]] = {STAGE1: []}
    for r in plan.rows:
        out[r.key] = []
    for seed in plan.seeds:
        for key, kind in [(STAGE1, "stage2"), *((r.key, r.kind) for r in plan.rows)]:
            run = _run(stage_dir(plan.out, seed, key, kind), seed)
            if run is not None:
                out[key].append(run)
    if "sadcl" in out:
        out[GUARDED] = guarded_runs(out[STAGE1], out["sadcl"])
    return out


def guarded_runs(stage1: list[dict[str, Any]], sadcl: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per seed, what ``sadcl train`` ships with the stage-2 guard: the SADCL run when one of its validated epochs
    beat stage 1's selected val mAP (strictly, as the guard), else the stage-1 run (``kept_stage1``)."""
    first = {r["seed"]: r for r in stage1}
    out = []
    for run in sadcl:
        s1 = first.get(run["seed"])
        if s1 is None:
            continue
        kept = not run["val_mAP"] > s1["val_mAP"]  # the selected val mAP is stage 2's best validated epoch's
        out.append({**(s1 if kept else run), "seed": run["seed"], "kept_stage1": kept, "curve": []})
    return out


def plan_head(plan: AblationPlan) -> str | None:
    """The plan's ``model.head``, what stage 1, the stage-2 rows and ``straight`` train: as a seed's stage-1 run saved
    it (what trained, whatever this invocation's overrides say), else from the plan's config; None when neither can
    be read (a report is rebuilt from the runs alone)."""
    from sadcl.config import ConfigError, load_config
    from sadcl.training.train import saved_run_config

    saved = [run_dir(plan.out, s, STAGE1) / "config.yaml" for s in plan.seeds]
    try:
        first = next((p for p in saved if p.is_file()), None)
        return (
            saved_run_config(first) if first else load_config(plan.config, [*plan.overrides, *plan.extra])
        ).model.head
    except (ConfigError, OSError):
        return None


def _titles(plan: AblationPlan, head: str | None) -> dict[str, str]:
    """Row titles as Markdown (a row's own title escaped: ``--row`` names and settings are the user's text)."""
    return {
        STAGE1: "stage 1 only (a shorter budget: reference)",
        **{r.key: markdown_text(row_title(r, head)) for r in plan.rows},
        GUARDED: "SADCL as `sadcl train` ships it (stage-2 guard on)",
    }


def _paired(runs: dict[str, list[dict[str, Any]]], a: str, b: str, metric: str = "test") -> dict[int, float]:
    def value(r: dict[str, Any]) -> float:
        return r["test"]["mAP"] if metric == "test" else r["val_mAP"]

    by_b = {r["seed"]: value(r) for r in runs.get(b, [])}
    return {r["seed"]: value(r) - by_b[r["seed"]] for r in runs.get(a, []) if r["seed"] in by_b}


def _stats(runs: dict[str, list[dict[str, Any]]], a: str, b: str, metric: str = "test") -> dict[str, float]:
    """:func:`paired_stats` of row ``a`` minus row ``b`` over the seeds both finished."""
    return paired_stats(list(_paired(runs, a, b, metric).values()))


def _cell(values: list[float], sign: bool = False) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "–"
    m, s = mean_std(values)
    fmt = "+.2f" if sign else ".2f"
    return f"{m:{fmt}}" if math.isnan(s) else f"{m:{fmt}} ± {s:.2f}"


def _ci(st: dict[str, float]) -> str:
    if not st["n"]:
        return "–"
    if st["n"] < 2:
        return f"{st['mean']:+.2f} (1 seed)"
    return f"{st['mean']:+.2f}{interval_text(st)}, p = {st['p']:.3f} ({st['wins']}/{st['n']} better)"


def _order(plan: AblationPlan, runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    keys = [STAGE1, *(r.key for r in plan.rows)]
    if runs.get(GUARDED):
        keys.insert(keys.index("sadcl") + 1, GUARDED)
    return [k for k in keys if runs.get(k)]


def _reference(runs: dict[str, list[dict[str, Any]]]) -> str:
    """The row every Δ is taken against: the same-budget baseline, else the plain head, else none."""
    return next((k for k in ("baseline", "plain") if runs.get(k)), "")


def table(plan: AblationPlan, runs: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown: per row the seeds, val and test mAP (mean ± std), test CF1/OF1, paired Δ test mAP vs the reference
    row with its 95 % CI and p, Δ val mAP, minutes per run and training images/s."""
    ref = _reference(runs)
    titles = _titles(plan, plan_head(plan))
    lines = [
        f"| row | seeds | val mAP | test mAP | test CF1 | test OF1 | Δ test mAP vs {ref or '–'} (paired, 95 % CI) "
        "| Δ val mAP | min/run | train img/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in _order(plan, runs):
        rs = runs[key]
        delta = "–" if key == ref or not ref else _ci(_stats(runs, key, ref))
        vdelta = "–" if key == ref or not ref else _cell(list(_paired(runs, key, ref, "val").values()), sign=True)
        extra = f" (stage 1 kept on {sum(r['kept_stage1'] for r in rs)}/{len(rs)} seeds)" if key == GUARDED else ""
        lines.append(
            f"| {titles[key]}{extra} | {len(rs)} | {_cell([r['val_mAP'] for r in rs])} | "
            f"{' | '.join(_cell([r['test'][m] for r in rs]) for m in METRICS)} | {delta} | {vdelta} | "
            f"{_cell([r['minutes'] for r in rs])} | {_cell([r['images_per_s'] for r in rs])} |"
        )
    return "\n".join(lines)


def per_seed_table(plan: AblationPlan, runs: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown: one line per seed, val / test mAP of every row."""
    keys = _order(plan, runs)
    seeds = sorted({r["seed"] for k in keys for r in runs[k]})
    by = {k: {r["seed"]: r for r in runs[k]} for k in keys}
    head = "| seed | " + " | ".join(f"{markdown_text(k)} val / test" for k in keys) + " |"
    lines = [head, "|---|" + "---|" * len(keys)]
    for s in seeds:
        cells = [f"{by[k][s]['val_mAP']:.2f} / {by[k][s]['test']['mAP']:.2f}" if s in by[k] else "–" for k in keys]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(runs: dict[str, list[dict[str, Any]]], *, head: str | None = "query2label") -> str:
    """One line: what SADCL changes against its same-budget baseline, what the other rows score, what ships and how
    that compares with the plain head (``head``: the plan's ``model.head``, named where it is not Query2Label; None:
    not known)."""
    parts = []
    on = "" if head in ("query2label", None) else f" (on {head_name(head)})"
    d = _stats(runs, "sadcl", "baseline")
    if d["n"]:
        parts.append(
            f"on this data SADCL{on} changes test mAP by {d['mean']:+.2f}{interval_text(d)} over {d['n']} seed(s) "
            "against its same-budget baseline"
        )
    for key, what in (
        ("plain", "the plain head"),
        ("straight", f"{head_name(head)} straight through"),
        ("csra", "CSRA"),
        ("ml_decoder", "ML-Decoder"),
    ):
        if runs.get(key):
            m, s = mean_std([r["test"]["mAP"] for r in runs[key]])
            vs = _stats(runs, "sadcl", key)
            rel = f" (SADCL − it: {vs['mean']:+.2f}{interval_text(vs)})" if vs["n"] else ""
            parts.append(f"{what} scores {m:.2f}" + (f" ± {s:.2f}" if not math.isnan(s) else "") + rel)
    if runs.get(GUARDED):
        kept = sum(r["kept_stage1"] for r in runs[GUARDED])
        m, _ = mean_std([r["test"]["mAP"] for r in runs[GUARDED]])
        vs = _stats(runs, GUARDED, "plain")
        rel = f"; that − the plain head: {vs['mean']:+.2f}{interval_text(vs)}" if vs["n"] else ""
        parts.append(
            f"with the stage-2 guard `sadcl train` ships {m:.2f} (stage 1 kept on {kept}/{len(runs[GUARDED])}{rel})"
        )
    return ("; ".join(parts) + ".") if parts else "No comparable runs have finished yet."


def results_json(plan: AblationPlan, runs: dict[str, list[dict[str, Any]]], *, command: str = "") -> dict[str, Any]:
    """``{"rows": {ROW: {"title", "kind", "settings", "seeds": {SEED: {"val_mAP", "test_mAP", ...}}}}, "paired",
    "verdict", ...}``; ``paired`` holds each row against the reference row, and ``sadcl_vs_plain`` /
    ``sadcl_guarded_vs_plain`` (SADCL as trained and as `sadcl train` ships it, against the plain head)."""
    by_key: dict[str, Row] = {r.key: r for r in plan.rows}
    ref = _reference(runs)
    head = plan_head(plan)
    titles = _titles(plan, head)
    data: dict[str, Any] = {
        "command": command,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "config": plan.config,
        "overrides": list(plan.overrides),
        "seeds": list(plan.seeds),
        "rows": {},
        "paired": {},
        "verdict": verdict(runs, head=head),
    }
    for key in _order(plan, runs):
        row = by_key.get(key)
        data["rows"][key] = {
            "title": row_title(row, head) if row else titles[key],
            "kind": row.kind if row else ("reference" if key == STAGE1 else "derived"),
            "settings": list(row.settings) if row else [],
            "seeds": {
                str(r["seed"]): {
                    "val_mAP": r["val_mAP"],
                    "test_mAP": r["test"]["mAP"],
                    "test_CF1": r["test"]["CF1"],
                    "test_OF1": r["test"]["OF1"],
                    "best_epoch": r.get("best_epoch"),
                    "selected": r.get("selected"),
                    "minutes": r.get("minutes"),
                    **({"kept_stage1": r["kept_stage1"]} if "kept_stage1" in r else {}),
                }
                for r in runs[key]
            },
        }
        if ref and key != ref:
            test = _stats(runs, key, ref)
            if test["n"]:
                val = _stats(runs, key, ref, "val")
                data["paired"][key] = {"vs": ref, "test_mAP": test, "val_mAP": val}
    for key in ("sadcl", GUARDED):  # (the guarded row: what `sadcl train` ships, against the plain head)
        if runs.get("plain") and runs.get(key):
            data["paired"][f"{key}_vs_plain"] = {
                "vs": "plain",
                "test_mAP": _stats(runs, key, "plain"),
                "val_mAP": _stats(runs, key, "plain", "val"),
            }
    return data


def validated_mean(curves: list[list[float]]) -> tuple[Any, Any]:
    """The 1-based epochs that any seed validated (over the shortest curve) and the mean val mAP over the seeds that
    did. Epochs skipped by ``train.val_interval`` are NaN in a curve: left out, so the line joins validated epochs."""
    import numpy as np

    length = min(len(c) for c in curves)
    block = np.array([c[:length] for c in curves], dtype=float)  # [seeds, epochs]
    scored = ~np.isnan(block).all(axis=0)
    kept = block[:, scored]
    return np.arange(1, length + 1)[scored], kept.mean(axis=0, where=~np.isnan(kept))


def figure(plan: AblationPlan, runs: dict[str, list[dict[str, Any]]], path: Path, *, title: str = "") -> bool:
    """Test mAP per row (mean, std bar, one dot per seed) and val mAP by epoch (stage 1 then stage 2; single-stage
    rows over the whole budget); False when nothing finished."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = _order(plan, runs)
    if not keys:
        return False
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [1.2, 1]})
    for i, key in enumerate(keys):
        vals = [r["test"]["mAP"] for r in runs[key]]
        m, s = mean_std(vals)
        colour = "tab:gray" if key == STAGE1 else ("tab:red" if key.startswith("sadcl") else "tab:blue")
        ax.bar(i, m, 0.6, yerr=0 if math.isnan(s) else s, capsize=3, color=colour, alpha=0.45)
        ax.plot(np.full(len(vals), i) + np.linspace(-0.15, 0.15, len(vals)), vals, "k.", ms=4)
        top = max([m + (0 if math.isnan(s) else s), *vals])  # above the error bar and the dots: readable
        ax.text(i, top, f"{m:.2f}", ha="center", va="bottom", fontsize=7)
    low = min(r["test"]["mAP"] for k in keys for r in runs[k])
    high = max(r["test"]["mAP"] for k in keys for r in runs[k])
    ax.set_ylim(max(0.0, low - 0.3 * max(high - low, 2.0)), high + 0.15 * max(high - low, 2.0))
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([k.replace("_", "\n") for k in keys], fontsize=7)
    ax.set_ylabel("test mAP (bar: mean ± std; dots: seeds)", fontsize=8)
    ax.set_title(title or "equal-budget comparison", fontsize=9)
    ax.tick_params(labelsize=7)

    n1 = 0
    s1 = [r["curve"] for r in runs.get(STAGE1, []) if r["curve"]]
    if s1:
        x, y = validated_mean(s1)
        n1 = min(len(c) for c in s1)
        ax2.plot(x, y, marker="o", ms=3, color="tab:gray", label="stage 1")
    for key in keys:
        if key in (STAGE1, GUARDED):
            continue
        curves = [r["curve"] for r in runs[key] if r["curve"]]
        if not curves:
            continue
        kind = next((r.kind for r in plan.rows if r.key == key), "stage2")
        x, y = validated_mean(curves)
        ax2.plot(x + (n1 if kind == "stage2" else 0), y, marker="o", ms=3, label=key,
                 linestyle="-" if kind == "stage2" else "--")  # fmt: skip
    if not ax2.lines:
        ax2.text(0.5, 0.5, "no per-epoch history (rows carried from an earlier results file)", ha="center",
                 va="center", fontsize=8, transform=ax2.transAxes)  # fmt: skip
    ax2.set_xlabel("epoch (stage-2 rows continue stage 1; single-stage rows: dashed)", fontsize=8)
    ax2.set_ylabel("val mAP (better of regular / EMA), mean over seeds", fontsize=8)
    ax2.set_title("validation mAP by epoch", fontsize=9)
    ax2.tick_params(labelsize=7)
    if ax2.lines:
        ax2.legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def markdown(plan: AblationPlan, runs: dict[str, list[dict[str, Any]]], *, figure_path: str | None = None) -> str:
    """The report as Markdown: the verdict, the table, the per-seed table and the figure."""
    parts = [
        f"**Verdict:** {verdict(runs, head=plan_head(plan))}",
        "",
        table(plan, runs),
        "",
        "Per seed (val mAP / test mAP of the selected weights):",
        "",
        per_seed_table(plan, runs),
        "",
    ]
    if figure_path:
        parts += [f"![ablation]({figure_path})", ""]
    return "\n".join(parts)


def write_report(plan: AblationPlan, *, command: str = "", title: str = "") -> dict[str, Any]:
    """Write ``out/ablation.md``, ``out/ablation.json`` and ``out/ablation.png``; return the JSON data."""
    runs = collect(plan)
    data = results_json(plan, runs, command=command)
    atomic_write_text(plan.out / "ablation.json", json.dumps(data, indent=1, allow_nan=True) + "\n")
    has_figure = figure(plan, runs, plan.out / "ablation.png", title=title)
    atomic_write_text(
        plan.out / "ablation.md",
        (f"# {title}\n\n" if title else "") + markdown(plan, runs, figure_path="ablation.png" if has_figure else None),
    )
    return data
