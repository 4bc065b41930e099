"""Engine loop: step order, non-finite loss, mid-epoch skip, evaluation."""

import math

import pytest
import torch
from torch import nn

from sadcl.training.engine import evaluate, train_one_epoch


class _Model(nn.Module):
    contrastive = True

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.calls: list[str] = []

    def forward(self, x: torch.Tensor) -> dict:
        z = self.lin(x.flatten(1))
        return {"logits": z, "features": z.unsqueeze(-1)}

    def update_memory_bank(self, features, targets, logits, ignore=None) -> None:
        # Backward has not run yet: the grads are still cleared from the previous step (or never set).
        self.calls.append("bank" if self.lin.weight.grad is None else "bank-after-backward")


class _Criterion(nn.Module):
    weight_dict = {"asl": 1.0}

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, outputs: dict, targets: torch.Tensor, ignore: torch.Tensor | None = None) -> dict:
        return {"asl": self.scale * nn.functional.binary_cross_entropy_with_logits(outputs["logits"], targets)}

    def weights(self, progress: float | None = None) -> dict:
        return dict(self.weight_dict)

    def total(self, terms: dict, progress: float | None = None) -> torch.Tensor:
        self.seen_progress = [*getattr(self, "seen_progress", []), progress]
        return sum(terms.values())


def _loader() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    ds = torch.utils.data.TensorDataset(torch.randn(16, 4, generator=g), (torch.rand(16, 3, generator=g) > 0.5).float())
    return torch.utils.data.DataLoader(ds, batch_size=4)


def test_bank_before_backward_and_steps() -> None:
    model = _Model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    out = train_one_epoch(model, _Criterion(), _loader(), opt, sched, device="cpu", epoch=0, max_steps=3)
    assert model.calls == ["bank"] * 3
    assert sched.last_epoch == 3 and set(out) == {"asl", "loss", "asl_unweighted", "train_mAP"}


def test_start_step_matches_uninterrupted() -> None:
    torch.manual_seed(0)
    a = _Model()
    b = _Model()
    b.load_state_dict(a.state_dict())
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1)
    train_one_epoch(a, _Criterion(), _loader(), opt_a, None, device="cpu", epoch=0)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1)
    train_one_epoch(b, _Criterion(), _loader(), opt_b, None, device="cpu", epoch=0, max_steps=2)
    train_one_epoch(b, _Criterion(), _loader(), opt_b, None, device="cpu", epoch=0, start_step=2)
    assert torch.equal(a.lin.weight, b.lin.weight)


def test_each_step_gets_its_share_of_the_stage_for_the_warm_up() -> None:
    crit = _Criterion()
    model = _Model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train_one_epoch(model, crit, _loader(), opt, None, device="cpu", epoch=1, max_steps=3, stage_steps=9)
    assert crit.seen_progress == [3 / 9, 4 / 9, 5 / 9]  # epoch 1 of 3-step epochs: steps 3, 4, 5 of 9
    resumed = _Criterion()
    train_one_epoch(
        model, resumed, _loader(), opt, None, device="cpu", epoch=1, max_steps=3, start_step=2, stage_steps=9
    )
    assert resumed.seen_progress == [5 / 9]  # a mid-epoch resume continues the same ramp
    plain = _Criterion()
    train_one_epoch(model, plain, _loader(), opt, None, device="cpu", epoch=0, max_steps=2)
    assert plain.seen_progress == [None, None]


def test_non_finite_loss() -> None:
    model = _Model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(FloatingPointError, match="non-finite"):
        train_one_epoch(model, _Criterion(float("nan")), _loader(), opt, None, device="cpu", epoch=0)


def test_evaluate() -> None:
    from sadcl.metrics import mean_average_precision

    torch.manual_seed(0)
    model = _Model()
    res = evaluate(model, _loader(), device="cpu")
    x, y = _loader().dataset.tensors
    with torch.no_grad():
        logits = model.lin(x)
    # Every image once, in loader order: the logits, sigmoid scores and targets, and the mAP of exactly those.
    torch.testing.assert_close(torch.as_tensor(res["logits"]), logits)
    torch.testing.assert_close(torch.as_tensor(res["scores"]), torch.sigmoid(logits))
    assert torch.equal(torch.as_tensor(res["targets"]).float(), y)
    assert res["mAP"] == pytest.approx(mean_average_precision(torch.sigmoid(logits).numpy(), y.numpy()))
    assert res["mAP"] != pytest.approx(mean_average_precision(torch.sigmoid(-logits).numpy(), y.numpy()))
    assert model.calls == []  # evaluation never writes the memory bank


class _ConvModel(nn.Module):
    contrastive = False

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 3)
        self.layouts: list[bool] = []  # per forward: was the batch channels_last?

    def forward(self, x: torch.Tensor) -> dict:
        self.layouts.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return {"logits": self.head(self.conv(x).mean((2, 3)))}


def _image_loader() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    ds = torch.utils.data.TensorDataset(
        torch.randn(8, 3, 6, 6, generator=g), (torch.rand(8, 3, generator=g) > 0.5).float()
    )
    return torch.utils.data.DataLoader(ds, batch_size=4)


def test_channels_last_model_gets_channels_last_batches_and_same_result() -> None:
    from sadcl.training.engine import memory_format

    torch.manual_seed(0)
    nchw, nhwc = _ConvModel(), _ConvModel()
    nhwc.load_state_dict(nchw.state_dict())
    nhwc.to(memory_format=torch.channels_last)
    assert memory_format(nchw) == torch.contiguous_format and memory_format(nhwc) == torch.channels_last
    for model in (nchw, nhwc):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        train_one_epoch(model, _Criterion(), _image_loader(), opt, None, device="cpu", epoch=0)
        evaluate(model, _image_loader(), device="cpu")
    assert nchw.layouts == [False] * 4 and nhwc.layouts == [True] * 4  # 2 training + 2 evaluation batches each
    assert torch.allclose(nchw.conv.weight, nhwc.conv.weight, atol=1e-6)
    assert nhwc.conv.weight.is_contiguous(memory_format=torch.channels_last)  # the optimizer kept the layout


def test_one_training_step_function_shared_by_the_loop_and_the_speed_benchmark(monkeypatch) -> None:
    import inspect

    import sadcl.training.engine as engine
    from support.benchmarks import load_benchmark

    source = inspect.getsource(engine.train_step)
    body = source.split('"""', 2)[2]  # without the signature and docstring
    assert len([line for line in body.splitlines() if line.strip()]) <= 60
    calls = []
    real = engine.train_step

    def counting(*args, **kwargs):
        calls.append(kwargs.get("where", ""))
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "train_step", counting)
    model = _Model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train_one_epoch(model, _Criterion(), _loader(), opt, None, device="cpu", epoch=2, max_steps=3)
    assert calls == ["epoch 3 step 1", "epoch 3 step 2", "epoch 3 step 3"]  # epoch=2 is the third: as the log
    bench = load_benchmark("bench_speed")
    from sadcl.config import LossConfig, OptimConfig
    from support.models import tiny_model_config

    step = bench.TrainStep(model_cfg=tiny_model_config(contrastive=True, bank_slots=2), loss_cfg=LossConfig(),
                           optim_cfg=OptimConfig(), batch=2)  # fmt: skip
    assert math.isfinite(step()) and len(calls) == 4
