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
    """The real pipeline end to end on tiny sizes: one seed, stage 1 + prototypes + every stage-2 row, then resume."""
    ablation = load_benchmark("ablation")
    out = tmp_path / "abl"
    md, chart, tsne = tmp_path / "B.md", tmp_path / "ablation.png", tmp_path / "tsne.png"
    argv = [
        "--quick",
        "--out",
        str(out),
        "--seeds",
        "0",
        "--benchmarks-md",
        str(md),
        "--chart",
        str(chart),
        "--tsne",
        str(tsne),
    ]
    assert ablation.main(argv) == 0
    rows = ablation.collect(out, [0])
    for key in ablation.ROW_ORDER:
        assert len(rows[key]) == 1, key
        for metric in ablation.METRICS:
            assert math.isfinite(rows[key][0]["test"][metric]), (key, metric)
        assert 0.0 <= rows[key][0]["test"]["mAP"] <= 100.0
    # Every stage-2 row starts from the one stage-1 model and prototypes of its seed.
    protos = out / "seed0" / "stage1" / "prototypes.npy"
    assert json.loads(protos.with_suffix(".json").read_text())["checkpoint"] == str(
        out / "seed0" / "stage1" / "baseline" / "best.pt"
    )
    baseline_cfg = (out / "seed0" / "baseline" / "sadcl" / "config.yaml").read_text()
    assert f"prototypes: {protos}" in baseline_cfg and "weight_sscl: 0.0" in baseline_cfg
    assert "contrastive: true" in baseline_cfg
    assert chart.stat().st_size > 0 and tsne.stat().st_size > 0
    section = md.read_text()
    assert "<!-- ablation:start -->" in section and "![ablation](ablation.png)" in section
    table = section.split("| row |", 1)[1].split("\n\n", 1)[0]
    assert "SADCL" in table and "same budget" in table and "stage 1 only" in table
    numbers = [float(x) for x in re.findall(r"[-+]?\d+\.\d+", table)]
    assert len(numbers) >= 6 * 3 and all(math.isfinite(x) for x in numbers)
    # Resumable: a second invocation finds every result and trains nothing.
    mtime = (out / "seed0" / "sadcl" / "sadcl" / "results.json").stat().st_mtime
    assert ablation.main([*argv, "--no-tsne"]) == 0
    assert (out / "seed0" / "sadcl" / "sadcl" / "results.json").stat().st_mtime == mtime
