"""Distributed helpers: single-process no-ops, and one real 2-process gloo run on CPU via torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from sadcl import distributed as D


def test_single_process_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    info = D.init_distributed(device="cpu")
    assert (info.rank, info.local_rank, info.world_size, info.device) == (0, 0, 1, torch.device("cpu"))
    assert info.is_main and not info.distributed
    assert not D.is_distributed() and not D.launched_by_torchrun()
    assert D.get_rank() == 0 and D.get_world_size() == 1 and D.is_main_process()
    D.barrier()
    D.cleanup()
    assert D.reduce_mean(torch.tensor(2.5)) == 2.5 and D.reduce_mean(3) == 3.0
    assert D.broadcast_object({"a": 1}) == {"a": 1}
    assert D.reduce_means({"loss": 1.5}) == {"loss": 1.5}
    x = torch.randn(3, 2, requires_grad=True)
    assert D.all_gather_with_grad(x) is x


def test_single_process_gather_sorts_and_deduplicates() -> None:
    idx = torch.tensor([2, 0, 1, 0])  # a padded repeat of sample 0
    scores = torch.tensor([[2.0], [0.0], [1.0], [0.0]])
    (out,) = D.gather_eval_outputs(scores, indices=idx)
    assert out.squeeze(1).tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="one row per index"):
        D.gather_eval_outputs(scores[:3], indices=idx)


def test_single_process_samplers() -> None:
    ds = list(range(10))
    ev = D.build_eval_sampler(ds)
    assert D.sampler_indices(ev).tolist() == list(range(10))
    tr = D.build_train_sampler(ds, shuffle=True, seed=0)
    tr.set_epoch(3)
    first = list(tr)
    tr.set_epoch(3)
    assert list(tr) == first and sorted(first) == ds
    # What makes DDP and single-process runs see the same batches (tests/test_ddp.py): rank r of 2 takes positions
    # r, r+2, ... of the one-replica permutation, so per-rank batches of b at step k together are the single-process
    # batch of 2b at step k.
    parts = []
    for r in range(2):
        s = DistributedSampler(ds, num_replicas=2, rank=r, shuffle=True, seed=0)
        s.set_epoch(3)
        parts.append(list(s))
    assert first[0::2] == parts[0] and first[1::2] == parts[1]


def test_seed_everything_is_rank_offset() -> None:
    D.seed_everything(5, rank=1)
    a = (np.random.rand(), torch.rand(1).item())
    D.seed_everything(6, rank=0)
    b = (np.random.rand(), torch.rand(1).item())
    assert a == b


WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from sadcl import distributed as D

    info = D.init_distributed(device="cpu", timeout_s=60)
    r, w = info.rank, info.world_size
    assert w == 2 and D.is_distributed() and D.get_rank() == r and D.is_main_process() == (r == 0)
    assert torch.distributed.get_backend() == "gloo"

    # all_gather_with_grad with different batch sizes per rank (2 and 3 rows).
    sizes = [2, 3]
    x = torch.full((sizes[r], 3), float(r + 1), requires_grad=True)
    g = D.all_gather_with_grad(x)
    assert g.shape == (5, 3)
    assert torch.equal(g, torch.cat([torch.full((n, 3), float(i + 1)) for i, n in enumerate(sizes)]))
    weight = torch.arange(15, dtype=torch.float32).view(5, 3)
    (g * weight).sum().backward()
    start = sum(sizes[:r])
    assert torch.equal(x.grad, weight[start:start + sizes[r]]), x.grad

    # gather_eval_outputs: 7 samples over 2 ranks -> the sampler pads rank 1 with a repeat of sample 0.
    ds = list(range(7))
    sampler = D.build_eval_sampler(ds)
    idx = D.sampler_indices(sampler)
    assert len(idx) == 4
    scores = idx[:, None].float() * 10 + torch.arange(3).float()
    targets = (idx[:, None] + torch.arange(3)) % 2
    s_all, t_all = D.gather_eval_outputs(scores, targets, indices=idx)
    full = torch.arange(7)
    assert torch.equal(s_all, full[:, None].float() * 10 + torch.arange(3).float()), s_all
    assert torch.equal(t_all, (full[:, None] + torch.arange(3)) % 2)

    # Criterion(gather_features=True): SSCL/PSCL over the global batch, G x the loss of the concatenated batch (rank
    # order, each rank's bank rows with its own samples); the gradient reaches only this rank's rows, G x theirs there.
    from sadcl.losses import AsymmetricLoss, Criterion, PSCLoss, SSCLoss

    b, c, p = 3, 4, 5
    gen = torch.Generator().manual_seed(0)  # the same draws on both ranks: the full batch, each rank takes its rows
    full_feats = torch.randn(w * b, c, p, generator=gen, dtype=torch.float64)
    full_bank = torch.randn(w * b, c, p, generator=gen, dtype=torch.float64)
    full_targets = (torch.rand(w * b, c, generator=gen) > 0.5).double()
    protos = torch.randn(c, p, generator=gen, dtype=torch.float64)
    rows = slice(r * b, (r + 1) * b)
    parts = dict(asl=AsymmetricLoss(), sscl=SSCLoss(variant="official"), pscl=PSCLoss())
    weights = {"asl": 1.0, "sscl": 100.0, "pscl": 50.0}
    feats = full_feats[rows].clone().requires_grad_()
    outputs = {
        "logits": torch.zeros(b, c, dtype=torch.float64),
        "proj_features": feats,
        "proj_bank": full_bank[rows],
        "proj_prototypes": protos,
    }
    terms = Criterion(**parts, weight_dict=weights, gather_features=True)(outputs, full_targets[rows])
    ref_feats = full_feats.clone().requires_grad_()
    ref = Criterion(**parts, weight_dict=weights).contrastive_terms(
        {"proj_features": ref_feats, "proj_bank": full_bank, "proj_prototypes": protos}, full_targets
    )
    for k in ("sscl", "pscl"):
        torch.testing.assert_close(terms[k], w * ref[k])
    (terms["sscl"] + terms["pscl"]).backward()
    (ref["sscl"] + ref["pscl"]).backward()
    torch.testing.assert_close(feats.grad, w * ref_feats.grad[rows])

    # Prototypes that follow the model: every rank gets the mean over the global batch's taken features.
    assert torch.equal(D.all_reduce_sum(torch.tensor([float(r), 1.0])), torch.tensor([1.0, 2.0]))
    from support.models import tiny_model_config
    from sadcl.models import build_model

    torch.manual_seed(0)  # the same model on both ranks
    model = build_model(tiny_model_config(contrastive=True, proj_dim=8, prototype_momentum=0.5))
    old = model.prototypes.detach().clone()
    gfeats = torch.randn(w * 2, 5, 32, generator=gen)
    taken = torch.zeros(w * 2, 5, dtype=torch.bool)
    taken[0, 0] = taken[3, 0] = taken[1, 2] = True  # class 0 on both ranks, class 2 on rank 0 only
    counts = model.update_prototypes(gfeats[r * 2 : (r + 1) * 2], taken[r * 2 : (r + 1) * 2])
    assert counts.tolist() == [2, 0, 1, 0, 0], counts
    torch.testing.assert_close(model.prototypes[0].detach(), 0.5 * old[0] + 0.25 * (gfeats[0, 0] + gfeats[3, 0]))
    torch.testing.assert_close(model.prototypes[2].detach(), 0.5 * old[2] + 0.5 * gfeats[1, 2])

    assert abs(D.reduce_mean(float(r)) - 0.5) < 1e-12
    assert D.reduce_means({"a": float(r), "b": 2.0 * r + 1}) == {"a": 0.5, "b": 2.0}
    assert D.broadcast_object({"rank": r}) == {"rank": 0}
    D.barrier()
    D.cleanup()
    open(os.path.join(sys.argv[1], f"ok.{r}"), "w").write("ok")
    """
)


def test_two_process_gloo(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    tests_dir = str(Path(__file__).resolve().parent)  # the worker imports the shared test helpers (``support``)
    path = os.pathsep.join(x for x in (tests_dir, os.environ.get("PYTHONPATH")) if x)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": path}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert (tmp_path / "ok.0").exists() and (tmp_path / "ok.1").exists()
