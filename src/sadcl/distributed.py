"""Distributed helpers: set-up from the ``torchrun`` environment, rank queries, gathers, samplers, seeds.

A single process needs no set-up: without ``RANK`` in the environment (nanoGPT's check) :func:`init_distributed`
returns rank 0 of 1, every query answers accordingly and every collective is a no-op. Under
``torchrun --nproc_per_node=G`` the process group is created with NCCL on CUDA and gloo on CPU.
"""

from __future__ import annotations

import datetime
import logging
import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler, Sampler

logger = logging.getLogger(__name__)

__all__ = [
    "DistInfo",
    "all_gather_with_grad",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "build_eval_sampler",
    "build_train_sampler",
    "cleanup",
    "gather_eval_outputs",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "launched_by_torchrun",
    "reduce_mean",
    "reduce_means",
    "resolve_device",
    "sampler_indices",
    "seed_everything",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: global ``rank``, ``local_rank`` on its node, ``world_size``, and its ``device``."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True when the torchrun environment (``RANK``) is present."""
    return int(os.environ.get("RANK", -1)) != -1


def is_distributed() -> bool:
    """True when a process group is initialised (even one of size 1)."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """Global rank, 0 without a process group."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes, 1 without a process group."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0 (the one that logs, writes checkpoints and evaluates)."""
    return get_rank() == 0


def resolve_device(device: str | torch.device | None, local_rank: int = 0) -> torch.device:
    """``"auto"``/None: the process's CUDA device if CUDA is available, else CPU; ``"cuda"``: ``cuda:local_rank``."""
    if device is None or str(device) == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def init_distributed(
    backend: str | None = None, *, device: str | torch.device | None = None, timeout_s: float = 1800.0
) -> DistInfo:
    """Initialise the process group from the torchrun environment, or describe the single process.

    Args:
        backend: ``"nccl"``/``"gloo"``; None = NCCL when the device is CUDA, gloo otherwise.
        device: ``"auto"``/None (``cuda:LOCAL_RANK`` when CUDA is available, else CPU), ``"cpu"``, ``"cuda"``
            (= ``cuda:LOCAL_RANK``) or an explicit device.
        timeout_s: Collective timeout. A rank that died or stalls makes the others fail after this long instead of
            hanging forever (torchrun then tears the whole job down).

    Returns:
        The :class:`DistInfo` of this process. The CUDA device is made current.
    """
    if not launched_by_torchrun():
        info = DistInfo(rank=0, local_rank=0, world_size=1, device=resolve_device(device, 0))
        if info.device.type == "cuda":
            torch.cuda.set_device(info.device)
        return info
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)  # before the process group, so NCCL binds each rank to its own GPU
    if backend is None:
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if not is_distributed():
        kwargs: dict[str, Any] = {}
        if backend == "nccl":
            kwargs["device_id"] = dev  # binds the communicator to this rank's GPU (no device guessing in barrier)
        dist.init_process_group(
            backend=backend, timeout=datetime.timedelta(seconds=timeout_s), rank=rank, world_size=world_size, **kwargs
        )
    logger.info("process group %s: rank %d/%d (local %d) on %s", backend, rank, world_size, local_rank, dev)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)


def barrier() -> None:
    """Wait for every rank (no-op single-process)."""
    if is_distributed() and get_world_size() > 1:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def cleanup() -> None:
    """Destroy the process group if there is one."""
    if is_distributed():
        dist.destroy_process_group()


def _comm_device(t: torch.Tensor) -> torch.device:
    """NCCL only moves CUDA tensors; gloo moves CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_gather_varlen(t: torch.Tensor) -> list[torch.Tensor]:
    """All-gather tensors whose first dimension may differ across ranks; returns one tensor per rank."""
    world = get_world_size()
    dev = _comm_device(t)
    x = t.detach().to(dev).contiguous()
    size = torch.tensor([x.shape[0]], device=dev, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    pad = max(counts) - x.shape[0]
    if pad:
        x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])
    out = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(out, x)
    return [o[:n] for o, n in zip(out, counts)]


def all_gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` from every rank along dim 0, in rank order; gradient flows into the local part only.

    The other ranks' parts are constants here (each rank back-propagates its own part), the usual contrastive-learning
    gather. The first dimension may differ between ranks.

    Args:
        t: [B_r, ...] on this rank.

    Returns:
        [sum_r B_r, ...] on ``t``'s device.
    """
    if not is_distributed() or get_world_size() == 1:
        return t
    parts = [p.to(t.device) for p in _all_gather_varlen(t)]
    parts[get_rank()] = t  # the local slice keeps its autograd history
    return torch.cat(parts)


def sampler_indices(sampler: Sampler) -> torch.Tensor:
    """The dataset indices a non-shuffling sampler yields on this rank, in order ([n] long)."""
    return torch.as_tensor(list(iter(sampler)), dtype=torch.long)


def gather_eval_outputs(*tensors: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Gather per-rank evaluation outputs and return them in dataset order, each sample once.

    ``DistributedSampler`` interleaves indices across ranks and pads by repeating samples when the dataset size is not
    divisible by the world size; the indices are gathered too, sorted, and duplicates are dropped, so every sample is
    counted exactly once. Single-process, the same sorting and de-duplication applies.

    Args:
        *tensors: Per-rank outputs [n_r, ...] (e.g. scores [n_r, C], targets [n_r, C]), row i belonging to
            dataset index ``indices[i]``.
        indices: Dataset indices [n_r] of the rows on this rank (e.g. :func:`sampler_indices` of the eval sampler,
            since an eval loader yields the sampler's order).

    Returns:
        One tensor per input, [N_unique, ...], rows sorted by dataset index, on the input tensors' devices.
    """
    indices = torch.as_tensor(indices, dtype=torch.long)
    for t in tensors:
        if t.shape[0] != indices.shape[0]:
            raise ValueError(f"every tensor needs one row per index ({indices.shape[0]}), got shape {tuple(t.shape)}")
    if is_distributed() and get_world_size() > 1:
        all_idx = torch.cat(_all_gather_varlen(indices)).cpu()
        gathered = [torch.cat(_all_gather_varlen(t)).to(t.device) for t in tensors]
    else:
        all_idx, gathered = indices.cpu(), list(tensors)
    order = torch.argsort(all_idx, stable=True)
    sorted_idx = all_idx[order]
    first = torch.ones_like(sorted_idx, dtype=torch.bool)
    first[1:] = sorted_idx[1:] != sorted_idx[:-1]
    keep = order[first]
    return tuple(g[keep.to(g.device)] for g in gathered)


def build_train_sampler(dataset: Dataset, *, shuffle: bool = True, seed: int = 0) -> DistributedSampler:
    """A ``DistributedSampler`` over this process's share (the whole dataset single-process); call ``set_epoch``.

    Single-process it is a ``DistributedSampler`` with one replica, so the permutation of epoch e is the same as under
    DDP: rank r of G takes positions r, r+G, ... of it, and the G per-rank batches of step k together hold exactly the
    samples of the single-process batch of size G*b at step k.

    Args:
        dataset: The training dataset.
        shuffle: Reshuffle every epoch (``seed + epoch``).
        seed: Shuffling seed, the same on every rank (official: 0, the torch default).
    """
    return DistributedSampler(dataset, num_replicas=get_world_size(), rank=get_rank(), shuffle=shuffle, seed=seed)


def build_eval_sampler(dataset: Dataset) -> DistributedSampler:
    """A non-shuffling ``DistributedSampler`` (sequential single-process); pads with repeats, see
    :func:`gather_eval_outputs`."""
    return DistributedSampler(dataset, num_replicas=get_world_size(), rank=get_rank(), shuffle=False)


def reduce_mean(value: float | torch.Tensor) -> float:
    """The mean of a scalar over ranks (for logging; the value itself single-process)."""
    if not is_distributed() or get_world_size() == 1:
        return float(value)
    return float(all_reduce_sum(torch.as_tensor(float(value), dtype=torch.float64)).item()) / get_world_size()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of a tensor over ranks, as a new tensor on ``t``'s device (``t`` itself single-process)."""
    if not is_distributed() or get_world_size() == 1:
        return t
    x = t.detach().to(_comm_device(t)).clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x.to(t.device)


def reduce_means(values: dict[str, float]) -> dict[str, float]:
    """The mean over ranks of several scalars in one collective (for logging; unchanged single-process)."""
    if not is_distributed() or get_world_size() == 1 or not values:
        return {k: float(v) for k, v in values.items()}
    keys = sorted(values)
    t = all_reduce_sum(torch.tensor([float(values[k]) for k in keys], dtype=torch.float64))
    return {k: float(v) / get_world_size() for k, v in zip(keys, t.tolist())}


def seed_everything(seed: int, rank: int | None = None) -> None:
    """Seed ``random``, ``numpy`` and ``torch`` (all devices) with ``seed + rank``, as the official code.

    Args:
        seed: Base seed.
        rank: The process's rank; None = :func:`get_rank`.
    """
    s = seed + (get_rank() if rank is None else rank)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)  # also seeds every CUDA device


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Send a picklable object from ``src`` to every rank (returned unchanged single-process)."""
    if not is_distributed() or get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
