"""ModelEma: exact official recurrence over parameters and buffers, set(), state dicts, wrapped models."""

from __future__ import annotations

import torch
from torch import nn

from sadcl.training.ema import ModelEma, unwrap_model


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.bn = nn.BatchNorm1d(2)  # running stats (float) + num_batches_tracked (long)
        self.register_buffer("bank", torch.zeros(4, 2))  # stands for the memory bank
        self.proto = nn.Parameter(torch.randn(2, 3))


def _perturb(model: Tiny, step: int) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
        model.bank.copy_(torch.randn(4, 2))
        model.bn.running_mean.add_(1.0)
        model.bn.num_batches_tracked.fill_(step)


def test_exact_recurrence_over_every_state_entry() -> None:
    torch.manual_seed(0)
    model = Tiny()
    decay = 0.9
    ema = ModelEma(model, decay=decay)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for step in range(1, 4):
        _perturb(model, step)
        ema.update(model)
        for k, m in model.state_dict().items():
            if m.is_floating_point():
                expected[k] = decay * expected[k] + (1.0 - decay) * m
            else:
                expected[k] = m.clone()
    got = ema.state_dict()
    assert got.keys() == expected.keys()
    for k in expected:
        assert got[k].dtype == expected[k].dtype, k
        torch.testing.assert_close(got[k], expected[k], rtol=0, atol=0, msg=k)
    # The buffers really moved (not just the parameters) and the counter is copied.
    assert not torch.equal(got["bank"], torch.zeros(4, 2))
    assert int(got["bn.num_batches_tracked"]) == 3


def test_ema_copy_is_independent_eval_and_frozen() -> None:
    model = Tiny().train()
    ema = ModelEma(model, decay=0.5)
    assert not ema.module.training
    assert all(not p.requires_grad for p in ema.module.parameters())
    with torch.no_grad():
        model.fc.weight.fill_(1.0)
    assert not torch.equal(ema.module.fc.weight, model.fc.weight)


def test_set_copies_model_and_state_dict_round_trip() -> None:
    torch.manual_seed(1)
    model = Tiny()
    ema = ModelEma(model, decay=0.99)
    _perturb(model, 5)
    ema.set(model)
    for k, v in model.state_dict().items():
        assert torch.equal(ema.state_dict()[k], v), k
    other = ModelEma(Tiny(), decay=0.99)
    other.load_state_dict(ema.state_dict())
    for k, v in ema.state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k


def test_wrapped_model_is_unwrapped() -> None:
    torch.manual_seed(2)
    model = Tiny()
    wrapped = nn.DataParallel(model)  # same `.module` convention as DDP, no process group needed
    assert unwrap_model(wrapped) is model
    ema = ModelEma(wrapped, decay=0.5)
    assert "module.fc.weight" not in ema.state_dict()
    _perturb(model, 1)
    ema.update(wrapped)
    assert torch.equal(ema.state_dict()["bank"], 0.5 * torch.zeros(4, 2) + 0.5 * model.bank)
