"""AdamW parameter group and the OneCycle schedule against the official golden schedule (docs/spec.md §3.2)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sadcl.config import ConfigError, OptimConfig
from sadcl.training.optim import build_optimizer, build_scheduler

GOLDEN = Path(__file__).parent / "data" / "golden" / "onecycle.npz"


def test_onecycle_matches_official_every_step() -> None:
    with np.load(GOLDEN) as d:
        lr_ref, beta1_ref, epoch_start_ref = d["lr"], d["beta1"], d["epoch_start_lr"]
    epochs, steps = 80, 1293
    assert lr_ref.shape == (epochs * steps,)
    opt = build_optimizer(nn.Linear(1, 1, bias=False), OptimConfig(lr=5e-5))
    sched = build_scheduler(opt, OptimConfig(lr=5e-5), epochs=epochs, steps_per_epoch=steps)
    group = opt.param_groups[0]
    lrs = np.empty(epochs * steps)
    betas = np.empty(epochs * steps)
    opt.step()  # no gradients: a no-op that keeps the "scheduler before optimizer" warning quiet
    t0 = time.perf_counter()
    for i in range(epochs * steps):
        lrs[i] = group["lr"]  # the lr the optimizer step i uses
        betas[i] = group["betas"][0]
        sched.step()
    assert time.perf_counter() - t0 < 30
    np.testing.assert_allclose(lrs, lr_ref, rtol=1e-10, atol=0)
    np.testing.assert_allclose(betas, beta1_ref, rtol=1e-10, atol=0)
    np.testing.assert_allclose(lrs[::steps], epoch_start_ref, rtol=1e-10, atol=0)
    assert lrs[0] == pytest.approx(5e-5 / 25, rel=1e-12) and np.argmax(lrs) == 20687


def test_optimizer_single_group_decays_everything_trainable() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)  # a frozen parameter stays out
    model.register_buffer("bank", torch.zeros(2, 4))  # buffers (the memory bank) are never optimized
    cfg = OptimConfig(lr=1e-3, weight_decay=5e-3, betas=(0.9, 0.999), eps=1e-8)
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.AdamW)
    assert len(opt.param_groups) == 1
    group = opt.param_groups[0]
    ids = {id(p) for p in group["params"]}
    expected = {id(p) for p in model.parameters() if p.requires_grad}
    assert ids == expected and id(model[0].weight) not in ids and id(model.bank) not in ids
    assert group["weight_decay"] == 5e-3 and group["betas"] == (0.9, 0.999) and group["eps"] == 1e-8


def test_scheduler_short_run_shape() -> None:
    cfg = OptimConfig(lr=1e-3, pct_start=0.2)
    opt = build_optimizer(nn.Linear(2, 2), cfg)
    sched = build_scheduler(opt, cfg, epochs=2, steps_per_epoch=5)
    lrs = []
    opt.step()
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs[0] == pytest.approx(1e-3 / 25, rel=1e-12)
    assert max(lrs) == pytest.approx(1e-3, rel=1e-12) and lrs.index(max(lrs)) == 1  # peak at step 0.2 * 10 - 1
    assert lrs[-1] < lrs[2]


def test_backbone_lr_scale_gives_the_backbone_its_own_scaled_cycle() -> None:
    model = nn.Module()
    model.backbone = nn.Linear(2, 2)
    model.fc = nn.Linear(2, 1)
    model.backbone.bias.requires_grad_(False)
    cfg = OptimConfig(lr=1e-3, backbone_lr_scale=0.1)
    opt = build_optimizer(model, cfg)
    rest, trunk = opt.param_groups
    assert {id(p) for p in rest["params"]} == {id(model.fc.weight), id(model.fc.bias)}
    assert {id(p) for p in trunk["params"]} == {id(model.backbone.weight)}  # frozen ones stay out
    sched = build_scheduler(opt, cfg, epochs=2, steps_per_epoch=5)
    opt.step()
    pairs = []
    for _ in range(10):
        pairs.append((rest["lr"], trunk["lr"]))
        sched.step()
    for lr_rest, lr_trunk in pairs:  # the same cycle, scaled, at every step
        assert lr_trunk == pytest.approx(0.1 * lr_rest, rel=1e-12)
    assert max(p[0] for p in pairs) == pytest.approx(1e-3, rel=1e-12)
    # a wrapper's "module." prefix is the same backbone
    assert len(build_optimizer(nn.DataParallel(model), cfg).param_groups) == 2
    # scale 1 is the official single group; a model without a backbone cannot take a scale
    assert len(build_optimizer(model, OptimConfig(lr=1e-3)).param_groups) == 1
    with pytest.raises(ValueError, match=r"optim.backbone_lr_scale=0.1 needs trainable parameters named backbone"):
        build_optimizer(nn.Linear(2, 2), cfg)


def test_backbone_lr_scale_must_be_positive() -> None:
    with pytest.raises(ConfigError, match=r"optim.backbone_lr_scale must be > 0, got 0"):
        OptimConfig(backbone_lr_scale=0)


def test_fused_adamw_takes_the_same_steps_as_the_default_loop() -> None:
    torch.manual_seed(0)
    models = {fused: nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 3)) for fused in (False, True)}
    models[True].load_state_dict(models[False].state_dict())
    start = models[False][0].weight.detach().clone()
    opts = {f: build_optimizer(m, OptimConfig(lr=1e-2, weight_decay=5e-3, fused=f)) for f, m in models.items()}
    assert opts[True].defaults["fused"] is True and not opts[False].defaults["fused"]
    x, y = torch.randn(16, 6), torch.randn(16, 3)
    for _ in range(5):
        for f, model in models.items():
            opts[f].zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opts[f].step()
    for (name, a), b in zip(models[False].named_parameters(), models[True].parameters()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=name)
    assert (models[False][0].weight - start).abs().max() > 1e-2  # the steps moved the weights


def test_fused_adamw_that_torch_refuses_is_a_config_error_naming_the_field(monkeypatch) -> None:
    def refuse(*args, fused=None, **kwargs):  # what torch says for parameters of a device without fused kernels
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return real(*args, **kwargs)

    real = torch.optim.AdamW
    monkeypatch.setattr(torch.optim, "AdamW", refuse)
    model = nn.Linear(2, 2)
    with pytest.raises(ConfigError, match=r"^optim.fused: `fused=True` requires .*; set optim.fused=false$"):
        build_optimizer(model, OptimConfig(fused=True))
    assert isinstance(build_optimizer(model, OptimConfig(fused=False)), real)
