"""Shared test setup: no hub downloads for the whole session, and the fixtures several test files use.

Being the rootdir conftest of a folder without ``__init__.py``, this file puts ``tests/`` on ``sys.path``, so test
files import the shared helpers as ``support`` (``from support.models import tiny_model``).
"""

from __future__ import annotations

import os
import socket

import pytest

# Set at import, before any test module imports timm / huggingface_hub (which read it when imported): tests build
# their models with pretrained=False, and a download attempt must fail fast instead of reaching the network.
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network for one test: ``HF_HUB_OFFLINE=1`` and any socket connection fails the test (restored afterwards)."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
