"""`sadcl report`: calibration and bootstrap maths against references, and the page of a tiny trained model in Chromium.

The end-to-end part trains a tiny model on a tiny MOM-30 (the TINY overrides of test_cli.py), builds its report with
a comparison against its own stage-1 checkpoint, checks the numbers against `sadcl evaluate`, and opens the page in
headless Chromium (the browser set-up of test_serve.py).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from sadcl.cli import main
from sadcl.inference.thresholds import load_temperature, load_thresholds, save_thresholds
from sadcl.metrics import per_class_ap
from sadcl.report.calibration import (
    expected_calibration_error,
    fit_temperature,
    mean_nll,
    per_class_ece,
    reliability_bins,
)
from sadcl.report.compare import bootstrap_delta_map, weighted_ap
from sadcl.report.cooccurrence import error_pairs, lift
from test_cli import TINY  # the shared tiny-model overrides


def test_ece_equals_a_reference_computation_on_fixed_arrays() -> None:
    probs = np.array([[0.05, 0.95], [0.15, 0.70], [0.72, 0.66], [0.99, 1.00], [0.50, 0.31]])
    targets = np.array([[0, 1], [1, 1], [0, 0], [1, 1], [1, 0]])
    # Written out: 5 equal-width bins [0, .2) [.2, .4) [.4, .6) [.6, .8) [.8, 1]; ECE = sum n_b/n |acc_b - conf_b|.
    p, y = probs.ravel(), targets.ravel()
    ref = 0.0
    for k in range(5):
        lo, hi = k / 5, (k + 1) / 5
        inside = (p >= lo) & ((p < hi) if k < 4 else (p <= hi))
        if inside.any():
            ref += inside.sum() / p.size * abs(y[inside].mean() - p[inside].mean())
    assert expected_calibration_error(probs, targets, bins=5) == pytest.approx(100 * ref)
    # The 10 pairs fall into bins [2, 1, 1, 3, 3] (0.5 opens the middle bin, 1.0 closes the last one).
    assert reliability_bins(probs, targets, bins=5)["count"].tolist() == [2, 1, 1, 3, 3]
    # Per class = the same formula on one column; an ignored entry is left out.
    col0 = expected_calibration_error(probs[:, 0], targets[:, 0], bins=5)
    assert per_class_ece(probs, targets, bins=5)[0] == pytest.approx(col0)
    ignore = np.zeros_like(targets, dtype=bool)
    ignore[4, 0] = True
    kept = expected_calibration_error(probs[:4, 0], targets[:4, 0], bins=5)
    assert per_class_ece(probs, targets, ignore=ignore, bins=5)[0] == pytest.approx(kept)


def test_temperature_scaling_lowers_val_nll_of_an_overconfident_model() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 1.5, size=(3000, 6))
    targets = (rng.random(true_logits.shape) < 1 / (1 + np.exp(-true_logits))).astype(np.float32)
    overconfident = 4.0 * true_logits  # the right ranking, four times too sure
    t = fit_temperature(overconfident, targets, mode="global")
    assert 3.5 < t < 4.5
    assert mean_nll(overconfident, targets, temperature=t) < 0.8 * mean_nll(overconfident, targets)
    probs = 1 / (1 + np.exp(-overconfident))
    calibrated = 1 / (1 + np.exp(-overconfident / t))
    assert expected_calibration_error(calibrated, targets) < 0.5 * expected_calibration_error(probs, targets)
    # Per class: each class's own factor; a class with no positive falls back to the global T.
    scaled = overconfident * np.array([1, 1, 1, 1, 1, 0.25])
    targets[:, 5] = 0
    per = fit_temperature(scaled, targets, mode="per-class")
    assert np.allclose(per[:5], 4.0, rtol=0.15) and per[5] == pytest.approx(fit_temperature(scaled, targets))


def test_weighted_ap_equals_metrics_on_the_resampled_set() -> None:
    rng = np.random.default_rng(1)
    scores, pos = rng.random(200), rng.random(200) < 0.3
    weights = rng.integers(0, 3, size=(4, 200))
    for w, ap in zip(weights, weighted_ap(scores, pos, weights)):
        again = per_class_ap(np.repeat(scores, w)[:, None], np.repeat(pos, w)[:, None])[0] / 100
        assert ap == pytest.approx(again, abs=1e-12)


def test_bootstrap_ci_covers_a_real_gain_and_not_a_null_one() -> None:
    rng = np.random.default_rng(2)
    y = (rng.random((400, 8)) < 0.2).astype(float)
    weak = y + rng.normal(0, 1.0, y.shape)
    strong = y + rng.normal(0, 0.5, y.shape)
    gain = bootstrap_delta_map(weak, strong, y, resamples=200)
    assert gain["low"] > 0 and gain["p_not_better"] == 0.0
    same = bootstrap_delta_map(weak, weak, y, resamples=50)
    assert same["low"] == same["high"] == 0.0


def test_false_positive_pairs_find_the_planted_dependency() -> None:
    rng = np.random.default_rng(3)
    y = rng.random((500, 4)) < 0.3
    pred = y.copy()
    pred[:, 1] |= y[:, 0] & (rng.random(500) < 0.6)  # class 1 hallucinated next to class 0
    train = rng.random((800, 4)) < 0.3
    train[:, 1] |= train[:, 0]
    pairs = error_pairs(pred, y, kind="fp", train_lift=lift(train))
    assert (pairs[0]["fp"], pairs[0]["present"]) == (1, 0) and pairs[0]["fp_lift"] > 2
    assert pairs[0]["train_lift"] > 1.2
    missed = y.copy()
    missed[:, 2] &= y[:, 3]  # class 2 found only next to class 3: missed wherever 3 is absent
    fn = error_pairs(missed, y, kind="fn")
    assert (fn[0]["missed"], fn[0]["absent"]) == (2, 3) and fn[0]["miss_lift"] > 2
    with pytest.raises(ValueError, match="kind must be"):
        error_pairs(missed, y, kind="tp")


def test_thresholds_file_round_trips_a_temperature(tmp_path: Path) -> None:
    names = ["a", "b"]
    f = tmp_path / "thr.json"
    save_thresholds(f, [0.3, 0.6], names, temperature=[1.5, 2.0])
    assert load_thresholds(f, names).tolist() == [0.3, 0.6]
    assert load_temperature(f, names).tolist() == [1.5, 2.0]
    save_thresholds(f, [0.3, 0.6], names)
    assert load_temperature(f, names) is None
    f.write_text(json.dumps({"a": 0.3, "b": 0.6, "temperature": -1}))
    with pytest.raises(ValueError, match="temperature"):
        load_temperature(f, names)


# --- end to end ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("timm")
    from sadcl.data.mom30 import generate_mom30

    root = tmp_path_factory.mktemp("mom30")
    generate_mom30(root, size=64, n_train=32, n_val=16, n_test=24, seed=0, progress=False)
    out = tmp_path_factory.mktemp("runs") / "run"
    overrides = [o for o in TINY if not o.startswith(("train.baseline_epochs", "train.epochs"))]
    args = [*overrides, "train.baseline_epochs=1", "train.epochs=1", f"data.root={root}", f"train.output_dir={out}"]
    assert main(["train", *args]) == 0
    return out


@pytest.fixture(scope="module")
def report_dir(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    argv = ["report", str(tiny_run / "sadcl" / "best.pt"), "--compare", str(tiny_run / "baseline" / "best.pt")]
    assert main([*argv, "--split", "test", "--out", str(out), "--bootstrap", "50", "--temperature", "global"]) == 0
    return out


@pytest.mark.slow
def test_report_numbers_equal_sadcl_evaluate(tiny_run: Path, tmp_path: Path) -> None:
    ckpt = str(tiny_run / "sadcl" / "best.pt")
    evaluated = tmp_path / "eval.json"
    assert main(["evaluate", ckpt, "--split", "test", "--out", str(evaluated)]) == 0
    ev = json.loads(evaluated.read_text())
    out = tmp_path / "report"
    assert main(["report", ckpt, "--split", "test", "--out", str(out), "--val-split", "none", "--examples", "0"]) == 0
    rep = json.loads((out / "report.json").read_text())
    s = rep["models"][0]["summary"]
    assert s["num_images"] == ev["num_images"]
    assert s["mAP"] == pytest.approx(ev["metrics"]["mAP"], abs=1e-9)
    for k in ("CP", "CR", "CF1", "OP", "OR", "OF1"):
        assert s["at_threshold"][k] == pytest.approx(ev["metrics"][k], abs=1e-9), k
        assert s["top3"][k] == pytest.approx(ev["metrics"][f"{k}_top3"], abs=1e-9), k
    per_class = {row["class"]: row["AP"] for row in rep["models"][0]["per_class"]}
    assert per_class == pytest.approx(ev["per_class_AP"], abs=1e-9)
    with open(out / "per_class.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == list(ev["per_class_AP"])


@pytest.mark.slow
def test_report_writes_compare_calibration_and_a_temperature_file(report_dir: Path, tiny_run: Path) -> None:
    rep = json.loads((report_dir / "report.json").read_text())
    names = rep["class_names"]
    ours, other = rep["models"]
    c = rep["compare"]
    assert c["delta_mAP"] == pytest.approx(ours["summary"]["mAP"] - other["summary"]["mAP"])
    assert c["bootstrap"]["low"] <= c["bootstrap"]["high"]
    cal = ours["calibration"]
    assert cal["val_NLL_after"] <= cal["val_NLL_before"] + 1e-12  # fitted on val: never worse there
    stored = load_temperature(report_dir / "thresholds.json", names)
    assert stored == pytest.approx(cal["temperature"])
    # The stored thresholds apply to sigmoid(logits): they select what the operating thresholds selected.
    thr = load_thresholds(report_dir / "thresholds.json", names)
    assert np.all((thr > 0) & (thr < 1))
    size = (report_dir / "index.html").stat().st_size
    assert size < 2_000_000


@pytest.mark.slow
def test_report_page_renders_in_chromium(report_dir: Path, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    from test_serve import CHROMIUM, CHROMIUM_ARGS

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run `make browser` (as root) to install Debian's chromium"
    shot = tmp_path / "report.png"
    errors: list[str] = []
    requests: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto((report_dir / "index.html").as_uri())
            page.wait_for_selector("#per-class tbody tr")
            title = page.locator("#title").inner_text()
            assert title.startswith("sadcl report: sadcl on test vs baseline")
            rows = page.locator("#per-class tbody tr").count()
            assert rows == 30  # MOM-30
            assert page.locator("#pr-grid svg").count() == 30 and page.locator("#calibration svg").count() == 2
            assert page.locator("#examples img").count() > 0
            # Sorting: a click on "class" orders the rows by name.
            page.locator("#per-class th", has_text="class").first.click()
            names = page.locator("#per-class tbody tr td:first-child").all_text_contents()
            assert names == sorted(names)
            page.screenshot(path=str(shot), full_page=False)
        finally:
            browser.close()
    assert not errors, errors
    assert all(u.startswith(("file:", "data:")) for u in requests), requests  # offline: nothing fetched
    from PIL import Image

    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.shape[:2] == (900, 1200)
    assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # text and charts, not blank
