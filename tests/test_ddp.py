"""DDP on CPU (gloo, 2 processes): a run finishes, equals the single-process run with the same global batch, and
the sharded evaluation equals the single-process one.

One ``torchrun --nproc_per_node=2`` launch does everything: both ranks train the baseline (``contrastive=False``)
with per-rank batch b under DDP; rank 0 additionally trains a single-process copy with batch 2b (no collectives) and
compares. Why the two runs see the same data: the train sampler is a ``DistributedSampler`` in both cases and rank r
of 2 takes positions r, r+2, ... of the same epoch permutation, so the two rank batches of step k together are the
single-process batch of step k; DDP averages the gradients of per-batch-mean losses, which is the gradient of the
mean over the union. Dropout is 0, there is no augmentation and BatchNorm is frozen, so nothing else differs.

The loop is the library's parts (build_model, build_optimizer / build_scheduler, ModelEma, the samplers,
gather_eval_outputs, summarize) in the official step order (SPEC §3.3); when ``sadcl.engine`` lands, its
``train_one_epoch`` / ``evaluate`` should replace ``train`` / ``predict`` below.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("timm")

WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    from sadcl import distributed as D
    from sadcl.config import ModelConfig, OptimConfig
    from sadcl.ema import ModelEma
    from sadcl.metrics import summarize
    from sadcl.models import build_model
    from sadcl.optim import build_optimizer, build_scheduler

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    info = D.init_distributed(device="cpu", timeout_s=120)
    rank, world = info.rank, info.world_size
    assert world == 2
    B, EPOCHS, N_TRAIN, N_VAL, C = 2, 2, 12, 7, 5  # per-rank batch b = 2, global 4; odd val size -> padding

    # A tiny MOM-30-like set: the same tensors on every rank (fixed generator).
    g = torch.Generator().manual_seed(123)
    images = torch.randn(N_TRAIN + N_VAL, 3, 64, 64, generator=g)
    labels = (torch.rand(N_TRAIN + N_VAL, C, generator=g) < 0.4).float()
    labels[torch.arange(C), torch.arange(C)] = 1.0  # every class has a positive in the first rows
    train_ds = TensorDataset(images[:N_TRAIN], labels[:N_TRAIN])
    val_ds = TensorDataset(images[N_TRAIN:], labels[N_TRAIN:])

    mcfg = ModelConfig(backbone="resnet18", pretrained=False, img_size=64, num_classes=C, hidden_dim=32, nhead=2,
                       enc_layers=1, dec_layers=1, dim_feedforward=64, dropout=0.0, contrastive=False)
    ocfg = OptimConfig(lr=1e-3)

    try:
        from sadcl.losses import AsymmetricLoss
        criterion = AsymmetricLoss(gamma_neg=4, gamma_pos=0, clip=0, eps=1e-5)  # a per-batch mean ('official')
    except ImportError:
        criterion = lambda logits, y: F.binary_cross_entropy_with_logits(logits, y)

    def fresh_model():
        D.seed_everything(1, rank=0)  # same init everywhere (DDP would broadcast rank 0's anyway)
        return build_model(mcfg)

    def train(model, loader, sampler):
        opt = build_optimizer(model, ocfg)
        sched = build_scheduler(opt, ocfg, epochs=EPOCHS, steps_per_epoch=len(loader))
        ema = ModelEma(model, decay=0.9)
        model.train()
        for epoch in range(EPOCHS):
            sampler.set_epoch(epoch)
            for x, y in loader:
                loss = criterion(model(x)["logits"], y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                ema.update(model)
        return ema

    @torch.no_grad()
    def predict(model, ds, sampler, batch_size):
        model.eval()
        scores, targets = [], []
        for x, y in DataLoader(ds, batch_size=batch_size, sampler=sampler):
            scores.append(torch.sigmoid(model(x)["logits"]))
            targets.append(y)
        return torch.cat(scores), torch.cat(targets)

    # DDP run: per-rank batch B.
    model = fresh_model()
    ddp = DistributedDataParallel(model, broadcast_buffers=False)
    sampler = D.build_train_sampler(train_ds, shuffle=True, seed=0)
    ddp_ema = train(ddp, DataLoader(train_ds, batch_size=B, sampler=sampler, drop_last=True), sampler)

    # Sharded evaluation of the DDP model (each rank its shard, padded), gathered in dataset order.
    eval_sampler = D.build_eval_sampler(val_ds)
    s, t = predict(model, val_ds, eval_sampler, batch_size=2)
    s_all, t_all = D.gather_eval_outputs(s, t, indices=D.sampler_indices(eval_sampler))
    ddp_metrics = summarize(s_all, t_all)

    result = {}
    if rank == 0:
        # Single-process reference, batch world * B, same permutation (one-replica DistributedSampler).
        ref = fresh_model()
        ref_sampler = DistributedSampler(train_ds, num_replicas=1, rank=0, shuffle=True, seed=0)
        ref_ema = train(ref, DataLoader(train_ds, batch_size=world * B, sampler=ref_sampler, drop_last=True),
                        ref_sampler)
        init = fresh_model().state_dict()

        def comparable(k, v):
            # The key bias of attention (middle third of in_proj_bias) has an exactly-zero gradient in theory (softmax
            # is shift invariant), so its gradient is pure rounding noise that AdamW normalises into +-lr steps.
            if k.endswith("in_proj_bias"):
                d = v.shape[0] // 3
                return torch.cat([v[:d], v[2 * d:]])
            return v

        def max_diff(a, b):
            return max((comparable(k, a[k]) - comparable(k, v)).abs().max().item()
                       for k, v in b.items() if v.is_floating_point())

        diffs = {k: max_diff({k: model.state_dict()[k]}, {k: v}) for k, v in ref.state_dict().items()
                 if v.is_floating_point()}
        moved = max_diff(ref.state_dict(), init)
        ema_diff = max_diff(ddp_ema.state_dict(), ref_ema.state_dict())
        # Single-process evaluation of the same (DDP-trained) weights over the whole val set, sequentially.
        s1, t1 = predict(model, val_ds, None, batch_size=3)
        sp_metrics = summarize(s1, t1)
        result = {
            "diffs": diffs,
            "param_max_diff": max(diffs.values()), "worst_key": max(diffs, key=diffs.get), "moved": moved,
            "ema_max_diff": ema_diff, "n_gathered": int(s_all.shape[0]),
            "score_max_diff": (s_all - s1).abs().max().item(), "targets_equal": bool(torch.equal(t_all, t1)),
            "ddp_metrics": {k: v for k, v in ddp_metrics.items() if isinstance(v, float)},
            "sp_metrics": {k: v for k, v in sp_metrics.items() if isinstance(v, float)},
        }
        with open(sys.argv[1], "w") as f:
            json.dump(result, f)
    D.barrier()
    D.cleanup()
    """
)


def test_ddp_two_processes_match_single_process(tmp_path: Path) -> None:
    script = tmp_path / "ddp_worker.py"
    script.write_text(WORKER)
    out = tmp_path / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    # (a) the run finishes on both ranks
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    r = json.loads(out.read_text())
    # (b) DDP with 2 x b == one process with 2b: weights and EMA equal up to float rounding (all-reduce order)
    assert r["moved"] > 1e-3, "training did not change the weights; the comparison would be vacuous"
    summary = {k: r[k] for k in ("param_max_diff", "worst_key", "moved", "ema_max_diff")}
    assert r["param_max_diff"] < 1e-5, summary
    assert r["ema_max_diff"] < 1e-5, summary
    # (c) sharded evaluation (odd size, padded shard) == single-process evaluation of the same weights
    assert r["n_gathered"] == 7 and r["targets_equal"]
    assert r["score_max_diff"] < 1e-6, r["score_max_diff"]
    assert r["ddp_metrics"].keys() == r["sp_metrics"].keys()
    for k, v in r["sp_metrics"].items():
        assert r["ddp_metrics"][k] == pytest.approx(v, rel=1e-9, abs=1e-9), k
