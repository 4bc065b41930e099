"""Smoke tests: the benchmark scripts run end to end in ``--quick`` mode on tiny sizes and write their outputs.

No timing or accuracy is asserted; the numbers of a quick run are meaningless by design.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from support.benchmarks import load_benchmark


@pytest.mark.slow
def test_bench_speed_quick(tmp_path: Path) -> None:
    bench_speed = load_benchmark("bench_speed")
    out = tmp_path / "speed.json"
    assert bench_speed.main(["--quick", "--no-write", "--out-json", str(out), "--reps", "1", "--warmup", "0"]) == 0
    results = json.loads(out.read_text())
    assert {"P1", "P2", "P3", "P4"} <= set(results)
    for key in ("P1", "P2", "P3", "P4"):
        value = results[key]
        rows = value if isinstance(value, list) else [value]
        for row in rows:
            assert "error" not in row, f"{key}: {row}"
    assert results["P2"][0]["ratio"] > 0
    assert results["P3"]["reference_ratio"] > 0 and results["P3"]["ratio"] > 0
    assert results["P4"]["ratio"] > 0


@pytest.mark.slow
def test_bench_heads_counts_and_times_every_head() -> None:
    bench_heads = load_benchmark("bench_heads")
    tiny = ["model.backbone=resnet18", "model.img_size=32", "model.hidden_dim=32", "model.dim_feedforward=64",
            "model.proj_dim=16", "model.bank_slots=8", "model.num_classes=5", "data.batch_size=4",
            "data.eval_batch_size=4"]  # fmt: skip
    rows = {name: [*tiny, *ov] for name, ov in bench_heads.ROWS.items()}
    res = bench_heads.measure(str(bench_heads.REPO_ROOT / "configs" / "emoji.yaml"), rows, reps=1, warmup=0)
    assert list(res) == list(bench_heads.ROWS)
    # The plain head is one linear layer on resnet18's 512 channels; the others are larger heads on the same trunk.
    assert res["plain (linear)"]["head_params"] == 5 * 513
    assert res["csra"]["params"] - res["csra"]["head_params"] == res["plain (linear)"]["params"] - 5 * 513
    for name, r in res.items():
        assert r["train_images_per_s"] > 0 and r["trainable"] <= r["params"], name
        assert ("eval_images_per_s" in r) == ("+SADCL" not in name), name
        if "+SADCL" in name:  # SADCL's projection head and prototypes on top of the same head
            assert r["head_params"] > res[name.removesuffix(" +SADCL")]["head_params"], name
    assert bench_heads.table(res)[2].startswith("| plain (linear) |")
    from sadcl.training.engine import train_step

    for name in ("query2label", "query2label +SADCL"):  # the stage-2 rows time SSCL and PSCL, the others ASL only
        b = bench_heads.build_row(str(bench_heads.REPO_ROOT / "configs" / "emoji.yaml"), rows[name])
        _, terms, _ = train_step(b["model"].train(), b["criterion"], b["images"], b["targets"], None, b["optimizer"],
                                 b["scheduler"])  # fmt: skip
        assert ({"sscl", "pscl"} <= set(terms)) == name.endswith("+SADCL"), (name, sorted(terms))


def test_study_trains_split_phases_without_publishing_then_reports_once(monkeypatch: pytest.MonkeyPatch) -> None:
    study = load_benchmark("study")
    calls: list[list[str]] = []
    rcs: list[int] = []

    def run(cmd: list[str]) -> object:
        calls.append(cmd[2:])
        return type("Done", (), {"returncode": rcs.pop(0) if rcs else 0})()

    monkeypatch.setattr(study.subprocess, "run", run)

    def arg(call: list[str], flag: str) -> list[str]:
        rest = call[call.index(flag) + 1 :]
        return rest[: next((i for i, a in enumerate(rest) if a.startswith("--")), len(rest))]

    assert study.main(["--phases", "heads_demo", "--publish"]) == 0
    *train, report = calls
    assert [arg(c, "--seeds") for c in train] == [["1", "2", "3"], ["4", "5", "6", "7", "8"]]
    for c in train:  # the carried row is never trained; nothing is published before the report
        assert "baseline" not in arg(c, "--rows") and "--benchmarks-md" not in c and "--report-only" not in c
    assert arg(report, "--seeds") == [str(s) for s in range(1, 9)] and "baseline" in arg(report, "--rows")
    assert "--report-only" in report and "--benchmarks-md" in report
    calls.clear()
    rcs[:] = [1, 0]  # the first training call fails: the phase reports nothing and fails
    assert study.main(["--phases", "heads_demo", "--publish"]) == 1 and len(calls) == 2
    calls.clear()
    assert study.main(["--phases", "demo", "--publish"]) == 0 and len(calls) == 1  # one call trains and publishes
    assert "--benchmarks-md" in calls[0] and "--report-only" not in calls[0]
    with pytest.raises(SystemExit):
        study.main(["--phases", "emoji", "--seeds", "9", "--publish"])


def test_cross_pairs_pairs_rows_of_two_results_files_by_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cross = load_benchmark("cross_pairs")
    monkeypatch.setattr(cross, "RESULTS", tmp_path)

    def write(section: str, rows: dict[str, dict[int, tuple[float, float]]]) -> None:
        seeds = {k: {str(s): {"val_mAP": v, "test_mAP": t} for s, (v, t) in r.items()} for k, r in rows.items()}
        (tmp_path / f"{section}.json").write_text(json.dumps({"rows": {k: {"seeds": v} for k, v in seeds.items()}}))

    write("a", {"x": {1: (60.0, 70.0), 2: (61.0, 71.0), 10: (62.0, 74.0)}})
    write("b", {"y": {2: (60.0, 70.0), 10: (60.0, 70.0), 3: (0.0, 0.0)}})
    st = cross.pair(("a", "x"), ("b", "y"))
    assert st["seeds"] == ["2", "10"]  # the seeds both have, in numeric order
    assert st["test"]["n"] == 2 and st["test"]["mean"] == pytest.approx(2.5) and st["test"]["wins"] == 2
    assert st["val"]["mean"] == pytest.approx(1.5)
    assert cross.pair(("a", "x"), ("c", "y")) is None and cross.pair(("a", "x"), ("b", "z")) is None
    fresh = cross.pair(("a", "x"), ("b", "y"), range(9, 17))  # a replication's seeds only
    assert fresh["seeds"] == ["10"] and fresh["test"]["mean"] == pytest.approx(4.0)
    assert cross.pair(("a", "x"), ("b", "y"), range(20, 30)) is None


def test_update_section_keeps_other_sections(tmp_path: Path) -> None:
    common = load_benchmark("_common")
    md = tmp_path / "B.md"
    common.update_section("a", "## A\n1", md)
    common.update_section("b", "## B\n2", md)
    common.update_section("a", "## A\n3", md)
    text = md.read_text()
    assert "## A\n3" in text and "## B\n2" in text and "## A\n1" not in text


@pytest.mark.slow
def test_ablation_quick(tmp_path: Path) -> None:
    """The thin caller of ``sadcl.ablate`` end to end on tiny sizes: one seed, stage 1 + stage-2 rows + the plain
    head, its section, JSON and figure inside --out, then a resumed invocation that trains nothing."""
    ablation = load_benchmark("ablation")
    out = tmp_path / "abl"
    argv = ["--quick", "--out", str(out), "--seeds", "0", "--rows", "baseline", "sadcl", "plain"]
    assert ablation.main(argv) == 0
    data = json.loads((out / "ablation.json").read_text())
    assert set(data["rows"]) == {"stage1", "baseline", "sadcl", "sadcl_guarded", "plain"}
    for row in data["rows"].values():
        assert 0.0 <= row["seeds"]["0"]["test_mAP"] <= 100.0
    section = (out / "BENCHMARKS.md").read_text()
    assert "<!-- ablation:start -->" in section and "![ablation](ablation.png)" in section
    table = section.split("| row |", 1)[1].split("\n\n", 1)[0]
    assert "SADCL" in table and "same budget" in table and "stage 1 only" in table and "plain head" in table
    numbers = [float(x) for x in re.findall(r"[-+]?\d+\.\d+", table)]
    assert len(numbers) >= 5 * 3 and all(math.isfinite(x) for x in numbers)
    assert (out / "ablation.png").stat().st_size > 0
    mtime = (out / "seed0" / "sadcl" / "sadcl" / "results.json").stat().st_mtime
    assert ablation.main(argv) == 0
    assert (out / "seed0" / "sadcl" / "sadcl" / "results.json").stat().st_mtime == mtime


def test_every_script_is_listed_and_every_figure_sits_beside_its_numbers() -> None:
    root = Path(__file__).resolve().parent.parent
    bench = root / "benchmarks"
    listed = set(re.findall(r"^\| `([\w.]+\.py)` \|", (bench / "README.md").read_text(), flags=re.M))
    assert {p.name for p in bench.glob("*.py")} == listed  # a new script gets a row in the table
    assert not list(bench.glob("*.png"))  # figures live in benchmarks/results/, beside their JSON
    text = (root / "BENCHMARKS.md").read_text() + (root / "README.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)
    assert links and all((root / link).is_file() for link in links), [x for x in links if not (root / x).is_file()]
