"""Self-describing ONNX (thresholds, size, rule, version, preprocessing), the docs' numpy-only example, int8."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from sadcl import __version__  # noqa: E402
from sadcl.cli import main  # noqa: E402
from sadcl.inference.open import open_model  # noqa: E402
from sadcl.inference.postprocess import RULE  # noqa: E402
from sadcl.inference.predict import Predictor  # noqa: E402
from sadcl.inference.thresholds import save_thresholds  # noqa: E402
from sadcl.ship.export import OnnxRunner  # noqa: E402
from sadcl.ship.model_dir import export_model_dir  # noqa: E402
from support.ship import NAMES, make_run  # noqa: E402

# Each test uses a CLI export (dynamo tracing, about a minute on 2 cores): end-to-end, like the other CLI exports.
pytestmark = pytest.mark.slow

DOC = Path(__file__).resolve().parent.parent / "docs" / "onnx.md"
TUNED = [0.2, 0.58, 0.25, 0.7]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    env = make_run(tmp_path_factory.mktemp("onnx_ship"))
    save_thresholds(env["root"] / "thr.json", TUNED, NAMES)
    env["dir"] = export_model_dir(open_model(env["ckpt"], thresholds=env["root"] / "thr.json"), env["root"] / "dir")
    env["onnx"] = env["root"] / "model.onnx"
    argv = ["export", str(env["dir"]), "--out", str(env["onnx"]), "--quantize", "int8"]  # default mode: dynamic
    assert main(argv) == 0
    return env


def test_metadata_describes_everything(shipped) -> None:
    meta = OnnxRunner(shipped["onnx"]).metadata
    assert json.loads(meta["class_names"]) == NAMES
    assert json.loads(meta["thresholds"]) == TUNED
    assert json.loads(meta["img_size"]) == [64, 64]
    assert meta["rule"] == RULE and meta["activation"] == "sigmoid" and meta["sadcl_version"] == __version__
    pre = json.loads(meta["preprocessing"])
    assert pre["img_size"] == [64, 64] and pre["resize"] == "bilinear" and pre["color"] == "RGB"
    assert pre["mean"] == json.loads(meta["mean"])


def test_predict_onnx_needs_nothing_else(shipped, tmp_path) -> None:
    out = tmp_path / "pred.json"
    assert main(["predict", str(shipped["onnx"]), str(shipped["images"]), "--all-scores", "--out", str(out)]) == 0
    onnx_results = json.loads(out.read_text())
    assert main(["predict", str(shipped["dir"]), str(shipped["images"]), "--all-scores", "--out", str(out)]) == 0
    torch_results = json.loads(out.read_text())
    for a, b in zip(onnx_results, torch_results):
        assert [lab["label"] for lab in a["labels"]] == [lab["label"] for lab in b["labels"]]
        assert max(abs(a["scores"][n] - b["scores"][n]) for n in NAMES) < 1e-4
    np.testing.assert_array_equal(Predictor.from_path(shipped["onnx"]).thresholds, TUNED)


def _doc_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1, "docs/onnx.md should hold exactly one python example"
    return blocks[0]


def test_docs_example_is_dependency_free_and_matches(shipped, tmp_path) -> None:
    code = _doc_example()
    imported = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    assert imported <= {"json", "sys", "numpy", "onnxruntime", "PIL"}, imported
    script = tmp_path / "onnx_predict.py"
    script.write_text(code)
    images = sorted(str(p) for p in shipped["images"].iterdir())
    # -I: no PYTHONPATH, no current directory on the path; the example runs from a directory without the repository.
    proc = subprocess.run(
        [sys.executable, "-I", str(script), str(shipped["onnx"]), *images],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    example = json.loads(proc.stdout)
    reference = Predictor.from_path(shipped["onnx"]).predict_images(images, all_scores=True)
    worst = 0.0
    for ex, ref in zip(example, reference):
        assert ex["image"] == ref["image"]
        assert [name for name, _ in ex["labels"]] == [lab["label"] for lab in ref["labels"]]
        worst = max([worst, *(abs(score - ref["scores"][name]) for name, score in ex["labels"])])
    print(f"docs example vs sadcl predict: max abs probability diff {worst:.3g}")
    assert worst < 1e-4


def test_int8_dynamic_keeps_metadata_and_outputs(shipped) -> None:
    int8 = shipped["onnx"].with_suffix(".int8.onnx")
    fp32_runner, int8_runner = OnnxRunner(shipped["onnx"]), OnnxRunner(int8)
    assert int8.stat().st_size < shipped["onnx"].stat().st_size
    meta = int8_runner.metadata
    assert json.loads(meta["quantization"])["mode"] == "dynamic"
    assert meta["thresholds"] == fp32_runner.metadata["thresholds"] and meta["rule"] == RULE
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    diff = float(np.abs(int8_runner(x)["probs"] - fp32_runner(x)["probs"]).max())
    print(f"int8 dynamic vs fp32: max abs probability diff {diff:.3g}")
    assert diff < 0.05


def test_int8_static_calibrates_on_training_split(shipped, tmp_path) -> None:
    from sadcl.inference.open import load_model
    from sadcl.ship.quantize import calibration_batches, quantize_onnx

    _, config, _ = load_model(shipped["dir"])
    batches = calibration_batches(config, num_images=4, batch_size=2)
    assert [b.shape for b in batches] == [(2, 3, 64, 64), (2, 3, 64, 64)]
    out = tmp_path / "static.int8.onnx"
    info = quantize_onnx(shipped["onnx"], out, mode="static", calibration=batches)
    assert info["calibration_images"] == 4
    runner = OnnxRunner(out)
    assert json.loads(runner.metadata["quantization"])["mode"] == "static"
    x = np.concatenate(batches)
    diff = float(np.abs(runner(x)["probs"] - OnnxRunner(shipped["onnx"])(x)["probs"]).max())
    print(f"int8 static vs fp32 on calibration images: max abs probability diff {diff:.3g}")
    assert diff < 0.1
    with pytest.raises(ValueError, match="static quantisation needs calibration"):
        quantize_onnx(shipped["onnx"], tmp_path / "x.onnx", mode="static")
    config.data.root = str(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="use --quantize-mode dynamic"):
        calibration_batches(config)
