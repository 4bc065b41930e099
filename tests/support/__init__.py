"""Test-support code shared by the test files (and the loss benchmark): tiny models, reference losses and
the loader of ``benchmarks/`` scripts.

Importable as ``support`` from tests: pytest puts ``tests/`` on ``sys.path`` for ``tests/conftest.py``.
"""
