"""``sadcl visualize attention`` end to end: the checkpoint's model and eval transform, --top-k and --thresholds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sadcl.cli import main
from sadcl.data.images import load_image
from sadcl.data.transforms import build_eval_transform
from sadcl.inference.attention import AttentionResult, attention_grid, label_attention
from sadcl.inference.open import load_model
from support.ship import NAMES, make_run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_run(tmp_path_factory.mktemp("visualize_cli"))


def _api_grid(
    run: dict[str, Path], image: Path, *, threshold, top_k: int | None, size: int
) -> tuple[Image.Image, AttentionResult]:
    model, config, names = load_model(run["ckpt"])
    result = label_attention(
        model,
        load_image(image),
        class_names=names,
        transform=build_eval_transform(config),
        threshold=threshold,
        top_k=top_k,
        display_size=size,
    )
    return attention_grid(result), result


def test_attention_cli_writes_the_api_grid(run: dict[str, Path], tmp_path: Path, capsys) -> None:
    image = run["images"] / "p1.png"
    out = tmp_path / "sub" / "att.png"
    argv = ["visualize", "attention", str(run["ckpt"]), str(image), "--out", str(out)]
    assert main([*argv, "--threshold", "0", "--top-k", "2", "--size", "64"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    expected, result = _api_grid(run, image, threshold=0.0, top_k=2, size=64)
    assert len(result.labels) == 2  # input tile + the two best labels
    written = Image.open(out).convert("RGB")
    assert written.size == expected.size
    np.testing.assert_array_equal(np.asarray(written), np.asarray(expected))


def test_attention_cli_reads_per_class_thresholds(run: dict[str, Path], tmp_path: Path) -> None:
    image = run["images"] / "p0.png"
    _, result = _api_grid(run, image, threshold=0.0, top_k=None, size=64)
    scores = dict(zip(NAMES, result.scores.tolist()))
    ranked = sorted(NAMES, key=scores.get)
    # The lowest- and the highest-scored labels pass their thresholds, the others miss theirs: not the set that any
    # single threshold (e.g. the default 0.5) would pick.
    keep = [ranked[0], ranked[-1]]
    thresholds = {n: (scores[n] / 2 if n in keep else min(1.0, scores[n] + (1 - scores[n]) / 2)) for n in NAMES}
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps(thresholds))
    out = tmp_path / "att.png"
    argv = ["visualize", "attention", str(run["ckpt"]), str(image), "--out", str(out), "--size", "64"]
    assert main([*argv, "--thresholds", str(path)]) == 0
    expected, shown = _api_grid(run, image, threshold=np.array([thresholds[n] for n in NAMES]), top_k=None, size=64)
    assert sorted(la.name for la in shown.labels) == sorted(keep)
    np.testing.assert_array_equal(np.asarray(Image.open(out).convert("RGB")), np.asarray(expected))


def test_attention_cli_names_a_missing_image(run: dict[str, Path], tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nope.png"
    assert main(["visualize", "attention", str(run["ckpt"]), str(missing), "--out", str(tmp_path / "a.png")]) != 0
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "a.png").exists()
