"""sadcl: Semantic-Aware Dual Contrastive Learning for multi-label image classification."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public API, imported lazily so that `import sadcl` stays fast and light (torch/timm load on first use).
_API = {
    "Config": "sadcl.config",
    "load_config": "sadcl.config",
    "build_model": "sadcl.models",
    "build_criterion": "sadcl.losses",
    "build_dataset": "sadcl.data",
    "load_model": "sadcl.inference.open",
    "open_model": "sadcl.inference.open",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'sadcl' has no attribute {name!r}")
