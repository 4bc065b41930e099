"""Small file helpers used everywhere: one atomic write, JSON reading, finite floats.

Every file sadcl writes (checkpoints, configs, results, thresholds, ONNX models, cached sources) goes through
:func:`atomic_path`: the data is written to a temporary file in the destination's directory, which replaces the
destination only when complete, so a crash, a full disk or a failed check never leaves a partial file where the
previous one was. The result gets the permissions of an ordinary new file (``0666`` minus the umask), not the
``0600`` of ``tempfile.mkstemp``.
"""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "LockHeldError",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "file_lock",
    "finite",
    "read_json",
]


class LockHeldError(RuntimeError):
    """:func:`file_lock` with ``wait=False`` found the lock held by another process."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; it replaces ``path`` when the block ends without an error.

    Raises:
        OSError: ``could not write PATH: no space left on device (previous file kept)`` and the like, naming the
            destination; the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno == errno.ENOSPC:
            raise OSError(
                errno.ENOSPC, f"could not write {path}: no space left on device (previous file kept)"
            ) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`); returns the path."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_path`); returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """The parsed JSON file, or ``default`` when it is missing or not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def finite(x: Any) -> float | None:
    """``float(x)``, or None for NaN / infinity (JSON has no NaN)."""
    x = float(x)
    return x if math.isfinite(x) else None


@contextmanager
def file_lock(path: str | os.PathLike, *, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the block: processes that would write
    the same thing at once take turns. POSIX ``flock``; where it does not exist (Windows) the block runs unlocked.

    Args:
        path: The lock file.
        wait: Wait for the lock (default); False raises :class:`LockHeldError` at once when another process holds it.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(path, "a+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise LockHeldError(f"{path} is locked by another process") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
