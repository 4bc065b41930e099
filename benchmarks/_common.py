"""Helpers shared by the benchmark scripts: machine description, timing, and BENCHMARKS.md sections.

Each script owns one section of ``BENCHMARKS.md`` between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` markers and
rewrites only that section, so the scripts can run in any order and be rerun independently.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sadcl.io import atomic_write_text

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = REPO_ROOT / "BENCHMARKS.md"

_HEADER = """# Benchmarks

Results of the scripts in `benchmarks/` (see `benchmarks/README.md` for what each one measures). Every section says
when, where and with which exact command it was produced; rerunning a script rewrites only its own section.
"""


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (falls back to ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_line(threads: int | None = None) -> str:
    """One line naming the date, the machine (``nproc``, CPU model) and the software versions."""
    import torch

    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        f"{now}",
        f"nproc {os.cpu_count()}",
        cpu_model(),
        f"Python {platform.python_version()}",
        f"torch {torch.__version__}",
    ]
    if threads is not None:
        parts.append(f"{threads} torch threads")
    return "; ".join(parts)


def repo_relative(path: str | Path) -> str:
    """``path`` relative to the repository when it lies inside (no machine-specific prefix in a report), else as given.

    ``absolute()``, not ``resolve()``: a symlink such as ``configs/mom30_demo.yaml`` keeps its own name.
    """
    try:
        return str(Path(path).absolute().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def command_line() -> str:
    """The command that is running, as it could be typed again (paths relative to the repository when possible)."""
    args = [repo_relative(a) if Path(a).is_absolute() else a for a in sys.argv[1:]]
    return " ".join(["python", shlex.quote(repo_relative(sys.argv[0])), *map(shlex.quote, args)])


def update_section(name: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) the ``name`` section of a markdown file, leaving the other sections untouched.

    Args:
        name: Section id used in the ``<!-- name:start -->`` / ``<!-- name:end -->`` markers.
        body: Markdown text of the section (its own heading included).
        path: The markdown file; created with a short header when missing.
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else _HEADER
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    # A temporary file of its own per writer: two scripts updating their sections at once never share one.
    atomic_write_text(path, text)


def interleaved_times(
    fns: dict[str, Callable[[], object]], *, reps: int, warmup: int, settle: int = 0
) -> dict[str, list[float]]:
    """Time several functions rep by rep in turn, so that background load hits all of them alike.

    Args:
        fns: Name -> a callable doing one unit of work (it must synchronise its device itself).
        reps: Timed repetitions per function.
        warmup: Untimed repetitions per function first.
        settle: Untimed calls of the same function right before each timed one. Use it when the functions differ a
            lot in memory footprint: a small one timed just after a large one otherwise pays for the other's cache
            and page-table churn (fresh pages faulted in again), which is not its own cost.

    Returns:
        Name -> the ``reps`` wall-clock durations in seconds.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            for _ in range(settle):
                fn()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def channels_last_copy(module: Any) -> Any:
    """A deep copy of a ``torch.nn.Module`` in ``channels_last`` memory format and eval mode (original untouched)."""
    import copy

    import torch

    return copy.deepcopy(module).to(memory_format=torch.channels_last).eval()


def median(values: list[float]) -> float:
    """The median (``statistics.median``), NaN for an empty list."""
    return statistics.median(values) if values else float("nan")
