"""DDP on CPU (gloo, 2 processes) through the real CLI: ``torchrun -m sadcl train`` / ``evaluate``.

(a) A 2-rank baseline run finishes and only rank 0 writes the run's files and logs its progress.
(b) It ends with the same weights (and EMA) as one process with twice the per-rank batch: the sampler splits the
    single-process batch of step k between the ranks, augmentation depends only on (seed, epoch, index), dropout is 0
    and BatchNorm is frozen, and DDP's gradient mean over ranks is the gradient of the mean over the union.
(c) Sharded evaluation of one checkpoint on an odd-sized split (the sampler pads a shard) equals the single-process one.
Also: ``train.gather_features=true`` runs the SADCL stage under torchrun, and one failing rank ends the job quickly.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from sadcl.checkpoint import load_checkpoint
from sadcl.data.mom30 import generate_mom30
from support.models import TINY_MODEL_OVERRIDES

pytest.importorskip("timm")
pytestmark = pytest.mark.slow  # every test runs torchrun with two training processes

B = 4  # per-rank batch; the single-process reference uses 2 * B
TIMEOUT_S = 300  # a hang fails the test instead of blocking the suite
TINY = [
    *TINY_MODEL_OVERRIDES,
    "model.img_size=64",
    f"model.bank_slots={B}",
    "model.dropout=0.0",
    "data.eval_batch_size=4",
    "data.workers=0",
    "data.normalization=imagenet",
    "data.train_preset=crop",
    "data.options={}",
    "train.baseline_epochs=2",
    "train.epochs=1",
    "train.max_steps_per_epoch=3",
    "train.early_stop_patience=null",
    "train.val_interval=1",  # every epoch's val is compared (the demo config validates every second)
    "train.progress=false",
    "train.log_interval=1",
    "train.prototype_threshold=0.3",
    "train.seed=3",
    "train.ema_decay=0.9",
    "train.device=cpu",
    "optim.lr=0.001",
]
METRICS = ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1")


def _env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    }
    return {**env, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]


def _start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{proc.args} hung for {TIMEOUT_S} s\n{out[-3000:]}\n{err[-6000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{proc.args}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


@pytest.fixture(scope="module")
def mom30_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mom30")
    # Odd val/test sizes: the 2-rank eval sampler pads one shard with a repeated sample.
    generate_mom30(root, size=64, n_train=48, n_val=15, n_test=15, seed=0, progress=False)
    return root


@pytest.fixture(scope="module")
def runs(mom30_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Any]]:
    """The baseline stage under torchrun (2 x B) and in one process (2B), run side by side."""
    base = tmp_path_factory.mktemp("runs")
    common = [*TINY, f"data.root={mom30_root}"]  # overrides come last: argparse takes them as one positional list
    ddp = _start(
        _torchrun(
            "-m",
            "sadcl",
            "train",
            "--stage",
            "baseline",
            "--output-dir",
            str(base / "ddp"),
            *common,
            f"data.batch_size={B}",
        )
    )
    single = _start(
        [
            sys.executable,
            "-m",
            "sadcl",
            "train",
            "--stage",
            "baseline",
            "--output-dir",
            str(base / "single"),
            *common,
            f"data.batch_size={2 * B}",
        ]
    )
    return {"ddp": (base / "ddp", _finish(ddp)), "single": (base / "single", _finish(single))}


def test_torchrun_run_writes_artefacts_on_rank_0_only(runs: dict) -> None:
    out, proc = runs["ddp"]
    _ok(proc)
    _ok(runs["single"][1])
    stage = out / "baseline"
    for name in ("last.pt", "best.pt", "metrics.json", "results.json", "config.yaml"):
        assert (stage / name).is_file(), stage / name
    assert (out / "config.yaml").is_file() and (out / "results.json").is_file()
    events = list((stage / "tb").iterdir())
    assert len(events) == 1, f"one TensorBoard writer (rank 0), got {events}"
    assert not [p for p in out.rglob(".*")], "no temporary files left behind"
    assert [row["epoch"] for row in json.loads((stage / "metrics.json").read_text())] == [0, 1]
    assert load_checkpoint(stage / "last.pt")["finished"]
    # Progress is reported once: rank 1 logs at WARNING only and prints no summary.
    text = proc.stdout + proc.stderr
    assert "rank 0/2" in text and "rank 1/2" not in text
    assert text.count("baseline epoch 2/2") == 1 and proc.stdout.count("run directory:") == 1


def test_torchrun_weights_equal_single_process(runs: dict) -> None:
    (ddp_dir, ddp_proc), (single_dir, single_proc) = runs["ddp"], runs["single"]
    _ok(ddp_proc)
    _ok(single_proc)
    ddp, single = (load_checkpoint(d / "baseline" / "last.pt") for d in (ddp_dir, single_dir))
    assert ddp["step"] == single["step"] == 3 and ddp["epoch"] == single["epoch"] == 1

    def comparable(key: str, v: torch.Tensor) -> torch.Tensor:
        # The key bias of attention (middle third of in_proj_bias) has an exactly-zero gradient in theory (softmax is
        # shift invariant): its gradient is rounding noise that AdamW normalises into +-lr steps, so it is skipped.
        if key.endswith("in_proj_bias"):
            d = v.shape[0] // 3
            return torch.cat([v[:d], v[2 * d :]])
        return v

    for which in ("model", "ema"):
        a, b = ddp[which], single[which]
        assert a.keys() == b.keys()
        for k, v in b.items():
            if not v.is_floating_point():
                assert torch.equal(a[k], v), (which, k)
                continue
            torch.testing.assert_close(
                comparable(k, a[k]),
                comparable(k, v),
                rtol=1e-4,
                atol=1e-5,
                msg=lambda m, which=which, k=k: f"{which} {k}: {m}",
            )
    # The EMA (decay 0.9) lags the trained weights: they differ only if training moved them.
    moved = max(
        (ddp["model"][k] - ddp["ema"][k]).abs().max().item()
        for k in ddp["model"]
        if ddp["model"][k].is_floating_point()
    )
    assert moved > 1e-4, "the weights did not move: the comparison would be vacuous"


@pytest.mark.parametrize("which", ["regular", "ema"])
def test_torchrun_validation_equals_single_process(runs: dict, which: str) -> None:
    """The per-epoch validation (sharded during training) of the regular and the EMA weights: every rank must score
    the same model, so each rank's EMA has to start from the weights DDP synchronised, not from its own init."""
    _ok(runs["ddp"][1])
    _ok(runs["single"][1])
    hist = [json.loads((runs[r][0] / "baseline" / "metrics.json").read_text()) for r in ("ddp", "single")]
    for a, b in zip(*hist):
        for k in METRICS:
            assert a["val"][which][k] == pytest.approx(b["val"][which][k], abs=1e-3), (a["epoch"], k)


def test_sharded_evaluation_equals_single_process(runs: dict, tmp_path: Path) -> None:
    ddp_dir, proc = runs["ddp"]
    _ok(proc)
    ckpt = str(ddp_dir / "baseline" / "last.pt")
    args = ["evaluate", ckpt, "--split", "test", "--device", "cpu", "--batch-size", "4"]
    sharded = _start(_torchrun("-m", "sadcl", *args, "--out", str(tmp_path / "ddp.json")))
    single = _start([sys.executable, "-m", "sadcl", *args, "--out", str(tmp_path / "single.json")])
    sharded_proc, single_proc = _finish(sharded), _finish(single)
    _ok(sharded_proc)
    _ok(single_proc)
    assert sharded_proc.stdout.count("wrote ") == 1  # rank 0 reports
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("ddp", "single"))
    assert a["num_images"] == b["num_images"] == 15
    for k in METRICS:
        assert a["metrics"][k] == pytest.approx(b["metrics"][k], rel=1e-9, abs=1e-9), k
    assert a["per_class_AP"].keys() == b["per_class_AP"].keys()
    for name, ap in b["per_class_AP"].items():  # None: a class without positives in the split
        assert a["per_class_AP"][name] == (None if ap is None else pytest.approx(ap, rel=1e-9, abs=1e-9)), name


def test_gather_features_sadcl_stage_runs(runs: dict, mom30_root: Path, tmp_path: Path) -> None:
    ddp_dir, proc = runs["ddp"]
    _ok(proc)
    cmd = _torchrun(
        "-m",
        "sadcl",
        "train",
        "--stage",
        "sadcl",
        "--output-dir",
        str(tmp_path),
        "--baseline-checkpoint",
        str(ddp_dir / "baseline" / "best.pt"),
        *TINY,
        f"data.root={mom30_root}",
        f"data.batch_size={B}",
        "train.max_steps_per_epoch=2",
        "train.gather_features=true",
    )
    _ok(_finish(_start(cmd)))
    results = json.loads((tmp_path / "sadcl" / "results.json").read_text())
    assert results["epochs_run"] == 1 and 0.0 <= results["test"]["mAP"] <= 100.0
    train = json.loads((tmp_path / "sadcl" / "metrics.json").read_text())[0]["train"]
    assert {"sscl", "pscl"} <= train.keys() and all(math.isfinite(v) for v in train.values()), train


FAILING_WORKER = textwrap.dedent(
    """
    from sadcl import distributed as D

    info = D.init_distributed(device="cpu", timeout_s=60)  # longer than the test allows: the tear-down must do it
    if info.rank == 1:
        raise RuntimeError("rank 1 fails on purpose")
    D.barrier()  # rank 0 would wait here for ever without torchrun's tear-down (or the timeout)
    """
)


def test_failing_rank_ends_the_job(tmp_path: Path) -> None:
    script = tmp_path / "fail.py"
    script.write_text(FAILING_WORKER)
    start = time.monotonic()
    proc = _finish(_start(_torchrun(str(script))))
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert "rank 1 fails on purpose" in proc.stdout + proc.stderr
    assert elapsed < 45, f"the job took {elapsed:.0f} s to stop after a rank failed"
