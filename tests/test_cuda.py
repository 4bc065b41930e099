"""The CUDA path (issue #31): AMP with GradScaler, the loss terms in fp16, channels_last, EMA on the GPU, exact resume,
NCCL and SyncBatchNorm under torchrun, pinned-memory loaders, predict / evaluate / ONNX export from CUDA.

Every test needs a CUDA device and is skipped without one (the reason says so); ``make gpu-check`` runs this file on a
GPU machine before it times a COCO-shaped run (``benchmarks/gpu_check.py``). Sizes are tiny (ResNet-18 at 64 px,
width 32) so the file takes about a minute on one GPU.

References are strict float32 (:func:`strict_fp32`: no TF32 in cuDNN or cuBLAS). Each tolerance is stated where it is
used; they are 5-10x the errors the same comparisons give under CPU autocast with this tiny model (torch 2.14), since
CUDA's autocast keeps at least as much in float32 (the final LayerNorm and so the logits, norms, exp, log, sums).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from sadcl.checkpoint import load_checkpoint
from sadcl.cli import main
from sadcl.config import LossConfig, OptimConfig, load_config
from sadcl.inference.open import load_model
from sadcl.losses import build_criterion
from sadcl.models import build_model
from sadcl.training.ema import ModelEma
from sadcl.training.engine import memory_format, place_model, train_one_epoch
from sadcl.training.optim import build_optimizer, build_scheduler
from support.models import TINY_MODEL_OVERRIDES, tiny_model_config

# cuBLAS picks its workspace per stream unless told otherwise, which can change the summation order between runs; set
# before the first CUDA context of this process (the exact-resume test compares two runs bit for bit).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

NO_CUDA = "no CUDA device (torch.cuda.is_available() is False): run `make gpu-check` on a GPU machine"
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)

REPO = Path(__file__).resolve().parents[1]
COCO_CONFIG = REPO / "configs" / "coco_r101_448.yaml"
DEVICE = torch.device("cuda", 0)
B, C = 8, 12  # batch (= bank slots) and classes of the model-level tests
NUM_CLASSES = 10  # classes of the synthetic COCO data of the run-level tests
TIMEOUT_S = 300  # a hung torchrun fails its test instead of blocking the suite
# configs/coco_r101_448.yaml (COCO format, AMP, stage 1 ASL + Cutout/RandAugment, stage 2 BCE + official SSCL x100 +
# PSCL x50) with the tiny model and schedule.
TINY = [
    *TINY_MODEL_OVERRIDES,
    "model.img_size=64",
    f"model.num_classes={NUM_CLASSES}",
    "model.bank_slots=8",
    "model.dropout=0.1",  # dropout draws from the CUDA generator: resuming must restore it
    "data.batch_size=8",
    "data.eval_batch_size=16",
    "data.workers=0",
    "data.val_holdout=16",
    "train.baseline_epochs=2",
    "train.epochs=1",
    "train.checkpoint_interval=2",
    "train.val_interval=1",
    "train.early_stop_patience=null",
    "train.progress=false",
    "train.tensorboard=false",
    "train.prototype_threshold=0.3",
    "train.seed=3",
    "train.ema_decay=0.9",
    "optim.lr=0.001",
]
COCO_STAGE2 = LossConfig(gamma_neg=0.0, sscl_variant="official", weight_pscl=50.0)  # the paper config's stage 2
STAGE1 = LossConfig(gamma_neg=4.0)  # ASL as in every stage 1 (+ the default paper SSCL, PSCL 5)


class Killed(Exception):
    """Stands in for a process killed between two steps: nothing after it runs, no cleanup saves anything."""


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """No TF32 in convolutions (cuDNN's default) or matmuls: a true float32 reference."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """Deterministic kernels: cuDNN's deterministic algorithms, sort-based index backward, the math attention kernel
    (the fused attention backward accumulates with atomics). Without them two CUDA runs differ in the last bits."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    old = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    finally:
        torch.use_deterministic_algorithms(old[0], warn_only=old[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old[2], old[3]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|a - b| / |b|`` over the whole tensors (float64)."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(nn.functional.cosine_similarity(a.detach().double().flatten(), b.detach().double().flatten(), dim=0))


def tiny_sadcl_on_cuda(*, channels_last: bool = True, seed: int = 0) -> nn.Module:
    """The tiny contrastive model (B bank slots, C classes, no dropout) with random prototypes, placed on the GPU."""
    torch.manual_seed(seed)
    model = build_model(tiny_model_config(contrastive=True, num_classes=C, bank_slots=B, proj_dim=16)).train()
    model.load_prototypes(torch.randn(C, 32))
    return place_model(model, device=DEVICE, channels_last=channels_last)


def batch(seed: int, *, n: int = B) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(images [n, 3, 64, 64], targets [n, C], ignore [n, C])`` on the CPU; every row has a positive, a few labels
    are unknown."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 64, 64, generator=g)
    targets = (torch.rand(n, C, generator=g) < 0.3).float()
    targets[:, 0] = 1.0
    ignore = torch.rand(n, C, generator=g) < 0.05
    ignore[:, 0] = False
    return images, targets, ignore


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}


def amp_step(model: nn.Module, criterion: nn.Module, data: tuple, dtype: torch.dtype | None) -> tuple[dict, dict, dict]:
    """Forward, loss terms and gradients of one batch: fp32 (``dtype`` None) or under autocast.

    fp16 goes through a GradScaler as in training: scaled backward, unscale; a scale whose gradients overflow is
    halved and the step redone (training skips such a step the same way). Returns (outputs, terms, gradients).
    """
    x, y, ignore = (t.to(DEVICE) for t in data)
    x = x.contiguous(memory_format=memory_format(model))
    scaler = torch.amp.GradScaler("cuda") if dtype is torch.float16 else None
    holder = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)  # what unscale_ acts on
    for _ in range(40):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype or torch.float16, enabled=dtype is not None):
            out = model(x)
            terms = criterion(out, y, ignore)
            loss = criterion.total(terms)
        if scaler is None:
            loss.backward()
            break
        scaler.scale(loss).backward()
        scaler.unscale_(holder)
        if all(bool(torch.isfinite(g).all()) for g in grads(model).values()):
            break
        scaler.update()  # found inf: halve the scale, as after a skipped training step
    else:
        pytest.fail("GradScaler found no scale with finite gradients in 40 halvings")
    return out, {k: v.detach() for k, v in terms.items()}, grads(model)


# ------------------------------------------------------------------------------------------------- AMP vs fp32
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("loss_cfg", [STAGE1, COCO_STAGE2], ids=["stage1_loss", "coco_stage2_loss"])
def test_amp_step_agrees_with_fp32(dtype: torch.dtype, loss_cfg: LossConfig) -> None:
    if dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    # Tolerances: relative error of the logits and of each loss term; cosine and relative error of the whole
    # gradient (every trainable parameter). CPU autocast measured fp16 1e-3 / 1.3e-3 / 0.9999 / 1.5e-2 and bf16
    # 7e-3 / 1.2e-2 / 0.9965 / 8.5e-2 for the same comparisons.
    logits_tol, term_tol, grad_cos, grad_tol = {
        torch.float16: (1e-2, 1e-2, 0.999, 0.1),
        torch.bfloat16: (5e-2, 5e-2, 0.98, 0.3),
    }[dtype]
    model = tiny_sadcl_on_cuda()
    criterion = build_criterion(loss_cfg, contrastive=True)
    data = batch(1)
    with strict_fp32():
        ref_out, ref_terms, ref_grads = amp_step(copy.deepcopy(model), criterion, data, None)
    out, terms, got_grads = amp_step(copy.deepcopy(model), criterion, data, dtype)

    # docs/spec.md §2.4: the final LayerNorm runs in float32, so the logits (hence ASL and the bank update) stay
    # float32 under autocast; only the projections (the contrastive terms' inputs) are in the low precision.
    assert out["logits"].dtype == torch.float32 and out["features"].dtype == torch.float32
    assert out["proj_features"].dtype == dtype
    assert rel_err(out["logits"], ref_out["logits"]) < logits_tol
    assert terms.keys() == ref_terms.keys() == {"asl", "sscl", "pscl"}
    for name, value in terms.items():
        assert torch.isfinite(value), name
        assert value.dtype in (torch.float32, torch.float64), name  # reductions in float32
        assert rel_err(value, ref_terms[name]) < term_tol, (name, float(value), float(ref_terms[name]))
    assert got_grads.keys() == ref_grads.keys()
    flat = torch.cat([got_grads[k].flatten() for k in ref_grads])
    ref_flat = torch.cat([ref_grads[k].flatten() for k in ref_grads])
    assert bool(torch.isfinite(flat).all())
    assert cosine(flat, ref_flat) > grad_cos
    assert rel_err(flat, ref_flat) < grad_tol


def test_amp_training_loop_with_grad_scaler_fused_adamw_and_ema() -> None:
    """``engine.train_one_epoch`` as a stage runs it on CUDA: fp16 autocast, GradScaler, fused AdamW, OneCycle, EMA
    on the GPU, unknown labels, the gradient-share probe on every step, pinned batches copied without blocking."""
    steps = 12
    model = tiny_sadcl_on_cuda()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    criterion = build_criterion(COCO_STAGE2, contrastive=True)
    ocfg = OptimConfig(lr=1e-3, fused=True)
    optimizer = build_optimizer(model, ocfg)
    scheduler = build_scheduler(optimizer, ocfg, epochs=1, steps_per_epoch=steps)
    scaler = torch.amp.GradScaler("cuda")
    ema = ModelEma(model, decay=0.9)
    batches = [tuple(t.pin_memory() for t in batch(10 + i)) for i in range(steps)]
    scales: list[float] = []
    logged: list[dict[str, float]] = []

    def log_fn(step: int, values: dict[str, float]) -> None:
        scales.append(scaler.get_scale())
        logged.append(values)

    stats = train_one_epoch(
        model,
        criterion,
        batches,
        optimizer,
        scheduler,
        device=DEVICE,
        epoch=0,
        ema=ema,
        scaler=scaler,
        amp=True,
        log_fn=log_fn,
        grad_probe_interval=1,
    )
    assert len(logged) == steps
    for values in logged:
        assert all(torch.isfinite(torch.tensor(v)) for v in values.values()), values
    # A step whose scaled gradients overflow is skipped and halves the scale; the others are applied.
    applied = sum(b >= a for a, b in zip([65536.0, *scales], scales))
    assert applied >= 1, f"GradScaler skipped every step (scales {scales})"
    # The probe's gradients (unscaled, in the autocast dtypes) give finite shares that add up to 1.
    shares = [stats[f"grad_share_{t}"] for t in ("asl", "sscl", "pscl")]
    assert all(torch.isfinite(torch.tensor(s)) for s in shares) and abs(sum(shares) - 1.0) < 1e-6, stats
    assert 0.0 <= stats["train_mAP"] <= 100.0
    weights = model.state_dict()
    moved = [k for k, v in weights.items() if v.is_floating_point() and not torch.equal(v, initial[k])]
    assert any(k.startswith("backbone.") for k in moved) and any(k.startswith("transformer.") for k in moved)
    assert all(bool(torch.isfinite(v).all()) for v in weights.values() if v.is_floating_point())
    # The EMA lives on the GPU with the model, was updated every step, and lags it (decay 0.9).
    assert ema.updates == steps
    for k, v in ema.state_dict().items():
        assert v.device == DEVICE, k
        assert not v.is_floating_point() or bool(torch.isfinite(v).all()), k
    lag = max((weights[k] - v).abs().max().item() for k, v in ema.state_dict().items() if v.is_floating_point())
    assert lag > 0


# ---------------------------------------------------------------------------------------------- loss terms in fp16
@pytest.mark.parametrize("loss_cfg", [STAGE1, COCO_STAGE2], ids=["stage1_loss", "coco_stage2_loss"])
def test_loss_terms_fp16_against_fp32(loss_cfg: LossConfig) -> None:
    """ASL, SSCL and PSCL on float16 inputs under autocast (as the projections arrive in training) against the same
    inputs in float32, at COCO's shape (B 32, C 80), with saturated logits (ASL's clamps) and unknown labels."""
    b, c, p = 32, 80, 64
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(b, c, generator=g) * 3
    logits[0, :8], logits[1, :8], logits[2, :8] = 40.0, -40.0, 1000.0  # p rounds to 1 / 0: the clamped entries
    targets = (torch.rand(b, c, generator=g) < 0.04).float()
    targets[:, 0] = 1.0
    targets[:3, :4] = 1.0
    ignore = torch.rand(b, c, generator=g) < 0.05
    ignore[:, 0] = False
    feats, bank = torch.randn(b, c, p, generator=g), torch.randn(b, c, p, generator=g)
    protos = torch.randn(c, p, generator=g)
    criterion = build_criterion(loss_cfg, contrastive=True)

    def run(dtype: torch.dtype) -> tuple[dict[str, float], list[torch.Tensor]]:
        leaves = [t.to(DEVICE, dtype, copy=True).requires_grad_() for t in (logits, feats, bank, protos)]
        out = dict(zip(("logits", "proj_features", "proj_bank", "proj_prototypes"), leaves))
        with torch.autocast("cuda", dtype=torch.float16, enabled=dtype is torch.float16):
            terms = criterion(out, targets.to(DEVICE), ignore.to(DEVICE))
            total = criterion.total(terms)
        total.backward()
        return {k: float(v) for k, v in terms.items()}, [t.grad.float() for t in leaves]

    with strict_fp32():
        ref_terms, ref_grads = run(torch.float32)
    terms, got = run(torch.float16)
    assert all(torch.isfinite(torch.tensor(v)) for v in terms.values()), terms
    assert all(bool(torch.isfinite(gr).all()) for gr in got), "non-finite gradient in float16"
    # Contrastive terms: normalisation, exp and log run in float32 under autocast, only the similarity matmul in
    # float16: values within 1e-3 relative (CPU autocast: 7e-5), gradients 1e-2 (CPU: 1.1e-3).
    for name in ("sscl", "pscl"):
        assert abs(terms[name] - ref_terms[name]) <= 1e-3 * abs(ref_terms[name]), (name, terms, ref_terms)
    for i, name in ((1, "proj_features"), (2, "proj_bank"), (3, "proj_prototypes")):
        assert rel_err(got[i], ref_grads[i]) < 1e-2, name
    # ASL on float16 logits: q = 1 - sigmoid(x) keeps 11 bits, so confident entries lose precision (CPU autocast:
    # value 8e-3 relative, gradient cosine 0.991), but the clamps keep everything finite (the float16 NaN known from
    # other ASL code comes from an eps that underflows; 1e-5 does not). The model keeps its logits in float32.
    assert abs(terms["asl"] - ref_terms["asl"]) <= 3e-2 * abs(ref_terms["asl"]), (terms, ref_terms)
    assert cosine(got[0], ref_grads[0]) > 0.95
    assert float(got[0][ignore.to(DEVICE)].abs().max()) == 0.0  # unknown labels pass no gradient


# ------------------------------------------------------------------------------------- channels_last, EMA, loaders
def test_channels_last_matches_contiguous_on_cuda() -> None:
    contiguous = tiny_sadcl_on_cuda(channels_last=False).eval()
    nhwc = place_model(copy.deepcopy(contiguous), device=DEVICE, channels_last=True)
    assert memory_format(contiguous) == torch.contiguous_format
    assert memory_format(nhwc) == torch.channels_last  # the loops move their batches to this layout
    x = batch(2)[0].to(DEVICE)
    with torch.inference_mode():
        with strict_fp32():
            a = contiguous(x)["logits"]
            b = nhwc(x.contiguous(memory_format=torch.channels_last))["logits"]
        # Other convolution kernels, other summation order: float32 agrees to 1e-4 relative.
        assert rel_err(b, a) < 1e-4
        with torch.autocast("cuda", dtype=torch.float16):
            c = contiguous(x)["logits"]
            d = nhwc(x.contiguous(memory_format=torch.channels_last))["logits"]
        # Under fp16 autocast each layout is within 1e-2 of float32 (the AMP test), so within 2e-2 of each other.
        assert bool(torch.isfinite(d).all()) and rel_err(d, c) < 2e-2


def test_ema_on_gpu_equals_ema_on_cpu() -> None:
    """The GPU average is bit for bit the CPU one (three IEEE roundings per entry, none fused), and an average kept
    on the CPU (``ModelEma(device="cpu")``) of a CUDA model too."""
    torch.manual_seed(0)
    cpu_model = build_model(tiny_model_config(contrastive=True, num_classes=C, bank_slots=B, proj_dim=16))
    gpu_model = copy.deepcopy(cpu_model).to(DEVICE)
    on_cpu, on_gpu, kept_on_cpu = (
        ModelEma(cpu_model, decay=0.99),
        ModelEma(gpu_model, decay=0.99),
        ModelEma(gpu_model, decay=0.99, device="cpu"),
    )
    assert all(v.device == DEVICE for v in on_gpu.state_dict().values())
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        with torch.no_grad():
            for pc, pg in zip(cpu_model.state_dict().values(), gpu_model.state_dict().values()):
                if pc.is_floating_point():
                    step = torch.randn(pc.shape, generator=g) * 0.01
                    pc.add_(step)
                    pg.add_(step.to(DEVICE))
        on_cpu.update(cpu_model)
        on_gpu.update(gpu_model)
        kept_on_cpu.update(gpu_model)
    for k, want in on_cpu.state_dict().items():
        assert torch.equal(on_gpu.state_dict()[k].cpu(), want), k
        assert torch.equal(kept_on_cpu.state_dict()[k], want), k


def test_loader_pins_memory_on_cuda() -> None:
    from torch.utils.data import TensorDataset

    from sadcl.data import build_loader

    images, targets, ignore = batch(3, n=12)
    loader = build_loader(TensorDataset(images, targets, ignore), batch_size=4, workers=2)
    assert loader.pin_memory  # the default when CUDA is available: non_blocking copies overlap the compute
    first = next(iter(loader))
    assert all(t.is_pinned() for t in first)
    on_gpu = first[0].to(DEVICE, non_blocking=True)
    torch.cuda.synchronize()
    assert torch.equal(on_gpu.cpu(), images[:4])


# ------------------------------------------------------------------------------------ runs: resume, CLI, export
@pytest.fixture(scope="module")
def coco_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic COCO-2014-format data (benchmarks/gpu_check.py's writer): 64 train (16 held out for val), 16 test."""
    from support.benchmarks import load_benchmark

    root = tmp_path_factory.mktemp("coco")
    gpu_check = load_benchmark("gpu_check")
    return gpu_check.write_synthetic_coco(root, n_train=64, n_val=16, image_size=(80, 64), num_classes=NUM_CLASSES)


def _overrides(root: Path, out: Path) -> list[str]:
    return [*TINY, f"data.root={root}", f"train.output_dir={out}", "train.device=cuda"]


@pytest.fixture(scope="module")
def cuda_runs(coco_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both stages of the COCO recipe (tiny) on CUDA with AMP: once straight through, once killed mid-epoch in each
    stage and resumed. Deterministic kernels, so that the two can be compared bit for bit."""
    from sadcl.training.train import run_training

    base = tmp_path_factory.mktemp("cuda_runs")
    kills = [("baseline", 1, 3), ("sadcl", 0, 3)]  # one step after a mid-epoch checkpoint (interval 2)

    def hook(stage: str, epoch: int, done: int) -> None:
        if kills and (stage, epoch, done) == kills[0]:
            kills.pop(0)
            raise Killed

    with deterministic():
        run_training(load_config(COCO_CONFIG, _overrides(coco_root, base / "full")))
        cfg = load_config(COCO_CONFIG, _overrides(coco_root, base / "killed"))
        with pytest.raises(Killed):
            run_training(cfg, hook=hook)
        with pytest.raises(Killed):
            run_training(cfg, resume=True, hook=hook)
        run_training(cfg, resume=True, hook=hook)
    return {"full": base / "full", "killed": base / "killed"}


@pytest.mark.slow
def test_resume_on_cuda_is_exact(cuda_runs: dict[str, Path]) -> None:
    full, killed = cuda_runs["full"], cuda_runs["killed"]
    for stage in ("baseline", "sadcl"):
        timing = ("train_seconds", "train_images_per_s")  # wall-clock measurements, not results
        want = {k: v for k, v in json.loads((full / stage / "results.json").read_text()).items() if k not in timing}
        got = {k: v for k, v in json.loads((killed / stage / "results.json").read_text()).items() if k not in timing}
        assert got == want, stage
        a, b = load_checkpoint(full / stage / "last.pt"), load_checkpoint(killed / stage / "last.pt")
        for key in ("model", "ema"):
            for name, tensor in a[key].items():
                assert torch.equal(tensor, b[key][name]), f"{stage} {key} {name}"
        # AMP ran (the recipe's train.amp) and its GradScaler state was resumed with the rest.
        assert a["scaler"] is not None and a["scaler"] == b["scaler"], stage
        assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
        assert len(a["rng"][0]["cuda"]) == torch.cuda.device_count()  # the CUDA generators travel in last.pt


def _json_out(tmp_path: Path, name: str) -> Path:
    return tmp_path / f"{name}.json"


@pytest.mark.slow
def test_predict_with_device_cuda(cuda_runs: dict[str, Path], coco_root: Path, tmp_path: Path) -> None:
    checkpoint, images = cuda_runs["full"] / "sadcl" / "best.pt", coco_root / "val2014"

    def scores(name: str, *options: str) -> dict[str, list[float]]:
        out = _json_out(tmp_path, name)
        args = ["predict", str(checkpoint), str(images), "--all-scores", "--workers", "2", "--out", str(out)]
        assert main([*args, *options]) == 0
        return {r["image"]: list(r["scores"].values()) for r in json.loads(out.read_text())}

    cpu = scores("cpu", "--device", "cpu")
    amp = scores("cuda_amp", "--device", "cuda")  # float16 autocast: the default on CUDA
    with strict_fp32():
        fp32 = scores("cuda_fp32", "--device", "cuda", "--no-amp")
    assert cpu.keys() == amp.keys() == fp32.keys() and len(cpu) == 16
    for image, want in cpu.items():
        # Probabilities: CUDA float32 equals the CPU to 1e-4 (summation order); fp16 autocast to 1e-2 (logits within
        # 1e-2 relative, and a sigmoid's slope is at most 1/4).
        assert max(abs(a - b) for a, b in zip(fp32[image], want)) < 1e-4, image
        assert max(abs(a - b) for a, b in zip(amp[image], want)) < 1e-2, image


@pytest.mark.slow
def test_evaluate_with_device_cuda(cuda_runs: dict[str, Path], tmp_path: Path) -> None:
    checkpoint = str(cuda_runs["full"] / "sadcl" / "best.pt")

    def report(name: str, *options: str) -> dict:
        out = _json_out(tmp_path, name)
        assert main(["evaluate", checkpoint, "--split", "val", "--workers", "2", "--out", str(out), *options]) == 0
        return json.loads(out.read_text())

    cpu = report("cpu", "--device", "cpu")
    with strict_fp32():
        fp32 = report("cuda", "--device", "cuda")
    amp = report("cuda_amp", "--device", "cuda", "--amp")
    # float32 on the GPU ranks the 16 images as the CPU does (score differences ~1e-6): the same mAP to 1e-3.
    assert abs(fp32["metrics"]["mAP"] - cpu["metrics"]["mAP"]) < 1e-3
    assert 0.0 <= amp["metrics"]["mAP"] <= 100.0


@pytest.fixture(scope="module")
def onnx_export(cuda_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``export_onnx`` of a model loaded onto the GPU (channels_last, as training and ``predict --device cuda`` hold
    it), with a batch and its float32 CUDA logits computed before the export."""
    from sadcl.ship.export import export_onnx

    model, config, class_names = load_model(cuda_runs["full"] / "sadcl" / "best.pt", map_location=DEVICE)
    place_model(model, device=DEVICE, channels_last=True)
    x = batch(4, n=3)[0]
    with torch.inference_mode(), strict_fp32():
        reference = model(x.to(DEVICE, memory_format=torch.channels_last))["logits"].cpu()
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    info = export_onnx(model, path, img_size=config.model.img_size, class_names=class_names)
    return {"path": path, "info": info, "images": x, "logits": reference, "class_names": class_names}


@pytest.mark.slow
def test_onnx_export_from_a_cuda_model(onnx_export: dict) -> None:
    from sadcl.ship.export import OnnxRunner

    info = onnx_export["info"]
    assert info["max_abs_diff"] is not None and info["max_abs_diff"] <= 1e-4  # export's own ORT vs PyTorch check
    runner = OnnxRunner(onnx_export["path"])
    assert runner.class_names == onnx_export["class_names"]
    got = torch.from_numpy(runner(onnx_export["images"].numpy())["logits"])
    # ONNX Runtime (CPU) against the CUDA float32 logits: 1e-4 absolute (two float32 implementations).
    assert float((got - onnx_export["logits"]).abs().max()) < 1e-4


@pytest.mark.slow
def test_onnx_runtime_cuda_provider(onnx_export: dict) -> None:
    import onnxruntime as ort

    from sadcl.ship.export import OnnxRunner

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDAExecutionProvider (the onnxruntime-gpu wheel has it)")
    runner = OnnxRunner(onnx_export["path"], providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert runner.session.get_providers()[0] == "CUDAExecutionProvider"
    got = torch.from_numpy(runner(onnx_export["images"].numpy())["logits"])
    # ORT's CUDA kernels may use TF32 convolutions (its default): 1e-2 relative on the logits.
    assert rel_err(got, onnx_export["logits"]) < 1e-2


# --------------------------------------------------------------------------------------------------- torchrun, NCCL
def _env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    }
    return {**env, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    try:
        proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{cmd} hung for {TIMEOUT_S} s\n{e.stdout!s:.3000}\n{e.stderr!s:.6000}")
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def _nproc() -> int:
    """One process per GPU, at most 2: NCCL refuses two ranks on one device, so one GPU gives a one-process group."""
    import torch.distributed as dist

    if not dist.is_nccl_available():
        pytest.skip("this torch build has no NCCL")
    return min(2, torch.cuda.device_count())


@pytest.mark.slow
def test_torchrun_nccl_train_and_evaluate(coco_root: Path, tmp_path: Path) -> None:
    """``sadcl train`` and ``sadcl evaluate`` under torchrun with NCCL, trainable BatchNorm as SyncBatchNorm (converted
    when there are two ranks) and the contrastive features gathered across ranks."""
    nproc = _nproc()
    out = tmp_path / "run"
    overrides = [
        *_overrides(coco_root, out),
        "train.sync_bn=true",
        "model.freeze_bn=false",  # SyncBatchNorm only matters for BatchNorm that trains
        "train.gather_features=true",
    ]
    train = _torchrun(nproc, "-m", "sadcl", "train", "--config", str(COCO_CONFIG), *overrides)
    text = train.stdout + train.stderr
    assert f"process group nccl: rank 0/{nproc}" in text, text[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert 0.0 <= results["sadcl"]["test"]["mAP"] <= 100.0
    last = load_checkpoint(out / "sadcl" / "last.pt")
    assert last["finished"] and last["scaler"] is not None
    # BatchNorm trained: its running statistics left their initial values (mean 0).
    means = [v for k, v in last["model"].items() if k.startswith("backbone.") and k.endswith("running_mean")]
    assert means and any(float(m.abs().max()) > 0 for m in means)
    evaluate = _torchrun(
        nproc, "-m", "sadcl", "evaluate", str(out / "sadcl" / "best.pt"), "--split", "val", "--device", "cuda"
    )
    assert "mAP" in evaluate.stdout


SYNC_BN_SCRIPT = """
import torch
import torch.distributed as dist
from torch import nn

from sadcl import distributed as D
from sadcl.config import LossConfig, ModelConfig
from sadcl.training.engine import place_model, train_one_epoch
from sadcl.losses import build_criterion
from sadcl.models import build_model

info = D.init_distributed(device="cuda")
assert dist.get_backend() == "nccl", dist.get_backend()
ws = dist.get_world_size()
torch.manual_seed(0)  # the same initial weights on every rank
cfg = ModelConfig(
    backbone="resnet18", pretrained=False, img_size=64, num_classes=6, hidden_dim=32, nhead=2, dim_feedforward=64,
    dropout=0.0, contrastive=True, proj_dim=16, bank_slots=4, freeze_bn=False,
)
model = build_model(cfg)
model.load_prototypes(torch.randn(6, 32))
place_model(model, device=info.device, channels_last=True)
model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
n_sync = sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
assert n_sync > 0
ddp = nn.parallel.DistributedDataParallel(model, device_ids=[info.device.index], broadcast_buffers=False)
g = torch.Generator().manual_seed(100 + info.rank)  # each rank its own images
batches = []
for _ in range(4):
    y = (torch.rand(4, 6, generator=g) < 0.4).float()
    y[:, 0] = 1
    batches.append((torch.randn(4, 3, 64, 64, generator=g), y))
criterion = build_criterion(LossConfig(), contrastive=True, gather_features=True)
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
stats = train_one_epoch(
    ddp, criterion, batches, optimizer, None, device=info.device, epoch=0, scaler=torch.amp.GradScaler("cuda"),
    amp=True,
)
assert all(torch.isfinite(torch.tensor(v)) for v in stats.values()), stats


def same_on_every_rank(t):
    parts = [torch.empty_like(t) for _ in range(ws)]
    dist.all_gather(parts, t.contiguous())
    return all(torch.equal(p, parts[0]) for p in parts)


sd = model.state_dict()
running = torch.cat([v.flatten() for k, v in sd.items() if k.endswith(("running_mean", "running_var"))])
params = torch.cat([p.detach().flatten() for p in model.parameters()])
assert float(running.abs().max()) > 0 and bool(torch.isfinite(running).all())
assert same_on_every_rank(running), "SyncBatchNorm statistics differ between ranks"
assert same_on_every_rank(params), "DDP parameters differ between ranks"
print(f"sync-bn ok: {n_sync} SyncBatchNorm, world {ws}")
D.cleanup()
"""


@pytest.mark.slow
def test_sync_batchnorm_ddp_amp_under_torchrun(tmp_path: Path) -> None:
    """SyncBatchNorm + DDP + fp16 GradScaler + gathered contrastive features in an NCCL group (one rank per GPU, at
    most 2; with one rank SyncBatchNorm computes the plain batch statistics)."""
    nproc = _nproc()
    script = tmp_path / "sync_bn.py"
    script.write_text(textwrap.dedent(SYNC_BN_SCRIPT))
    proc = _torchrun(nproc, str(script))
    assert f"world {nproc}" in proc.stdout, proc.stdout[-3000:]
