"""Checkpoints: atomic save, ``weights_only`` load, RNG state for exact resume, the weights a checkpoint stands for.

A checkpoint is a dict of tensors and plain data only (see docs/design.md), so ``torch.load(weights_only=True)``
accepts it: ``{"model", "config" (Config.to_dict()), "class_names", "stage", "epoch", "step", "optimizer",
"scheduler", "ema", "scaler", "rng", "metrics"}``; ``best.pt`` adds ``"selected"`` (``"ema"`` or ``"regular"``: the
weights that won on the validation split).
"""

from __future__ import annotations

import logging
import os
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sadcl import distributed as D
from sadcl.io import atomic_path

logger = logging.getLogger(__name__)


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically.

    The data goes to a temporary file in the same directory, which then replaces ``path`` with ``os.replace``,
    so a crash or a failing save never leaves a partial file where the previous checkpoint was.

    Args:
        state: tensors and plain data only.
        path: destination file.

    Returns:
        The destination path.
    """
    path = Path(path)
    with atomic_path(path) as tmp:  # on any error the temporary file goes; the previous checkpoint stays
        try:
            with open(tmp, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
        except RuntimeError as e:  # torch's writer reports a full disk as "enforce fail at inline_container.cc"
            reason = (
                "no space left on device"
                if "inline_container" in str(e) or "No space" in str(e)
                else str(e).splitlines()[0]
            )
            raise OSError(f"could not write {path}: {reason} (previous file kept)") from None
        # torch.save pickles anything; check the file meets the weights_only contract before it replaces the old one.
        try:
            torch.load(tmp, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"checkpoint for {path} holds objects that weights_only loading rejects: {exc}") from exc
    return path


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is corrupt or not a sadcl checkpoint (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # torch warns about a foreign pickle protocol before refusing the file
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types (pickle, zip, RuntimeError) for a bad file
        # torch's own message may advise weights_only=False, i.e. running arbitrary code: never pass that on.
        raise ValueError(
            f"{path} is not a readable sadcl checkpoint: {_what_file(path, e)}; expected a .pt file "
            "written by sadcl (RUN/<stage>/best.pt or last.pt)"
        ) from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ValueError(f"{path} is not a sadcl checkpoint (expected a dict with 'model' and 'config')")
    return state


def _what_file(path: Path, error: BaseException | None = None) -> str:
    """A short description of a file that failed to load as a checkpoint (``error``: what ``torch.load`` raised).

    Never advises deleting the file (it may be the user's only copy) nor loading it unsafely."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        return "the file is empty"
    refused = error is not None and "Weights only load failed" in str(error)
    if head.startswith(b"PK\x03\x04") and refused:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        return (
            "it holds Python objects that safe loading refuses"
            + (f" ({found.group(1)})" if found else "")
            + ", so it is not a sadcl checkpoint (those hold tensors and plain data only); nothing in it was run"
        )
    if head.startswith(b"PK\x03\x04"):
        return (
            "it is a damaged PyTorch file (truncated or corrupt; the last.pt of an interrupted save?); to redo "
            "that stage, move it out of the run directory; the stage's best.pt stays usable"
        )
    if path.suffix.lower() == ".onnx" or b"onnx" in head[:64].lower() or b"pytorch" in head[:64].lower():
        return "it looks like an ONNX model (use it with `sadcl predict --engine onnxruntime`)"
    if head[:2] == b"\x80\x02" or head[:1] == b"\x80":
        return "it is a plain pickle file, which sadcl never loads (unpickling can run code); nothing in it was run"
    try:
        head.decode("utf-8")
        return "it is a text file"
    except UnicodeDecodeError:
        return "its format is unknown"


def rng_state() -> dict[str, Any]:
    """This process's generator states as tensors and plain data (``weights_only`` safe)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }


def gather_rng_state() -> list[dict[str, Any]]:
    """The generator states of every rank, in rank order (each rank resumes its own stream)."""
    own = rng_state()
    if D.get_world_size() == 1:
        return [own]
    import torch.distributed as dist

    states: list[Any] = [None] * D.get_world_size()
    dist.all_gather_object(states, own)
    return states


def set_rng_state(states: list[dict[str, Any]], rank: int) -> None:
    """Restore this rank's generator states from :func:`gather_rng_state`'s list (a missing rank keeps its own)."""
    if rank >= len(states):
        logger.warning("the checkpoint holds RNG states of %d ranks; rank %d starts a fresh stream", len(states), rank)
        return
    s = states[rank]
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = s["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def selected_weights(state: dict[str, Any], use_ema: bool | None = None) -> dict[str, torch.Tensor]:
    """The model weights a checkpoint dict stands for.

    Args:
        state: A loaded checkpoint.
        use_ema: True = the EMA weights (when present), False = the regular ones, None = the ones the run selected on
            the validation split (``state["selected"]``, ``"ema"`` or ``"regular"``; the EMA weights when the
            checkpoint does not say).
    """
    if use_ema is None:
        use_ema = state.get("selected", "ema") == "ema"
    return state["ema"] if use_ema and state.get("ema") is not None else state["model"]
