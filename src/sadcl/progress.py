"""Progress that reads well both on a terminal and in a log file.

On a terminal (standard error is a TTY) a tqdm bar redraws in place. Redirected (``make demo > log.txt 2>&1``, a job
scheduler, CI) tqdm would write every redraw, hundreds of carriage-return lines per epoch; there
:func:`progress_bar` logs one line at each quarter of a long loop instead (``epoch 3: 50% (620/1240)``) and nothing
for a short one, and the caller's own summary line (the epoch line of training) says the rest.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["LineProgress", "progress_bar", "stderr_is_terminal"]

logger = logging.getLogger(__name__)


def stderr_is_terminal() -> bool:
    """Whether standard error is an interactive terminal (where a redrawn bar makes sense)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


class LineProgress:
    """A tqdm stand-in for non-terminals: iterate or :meth:`update`; logs at 25 %, 50 % and 75 % of ``total`` when the
    loop has at least ``min_total`` steps (shorter ones say nothing: their caller's summary is enough)."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        total: int | None,
        desc: str,
        unit: str = "it",
        initial: int = 0,
        min_total: int = 20,
    ) -> None:
        self.iterable, self.desc, self.unit = iterable, desc, unit
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total = total
        self.n = initial
        self._quiet = total is None or total < min_total
        self._quarter = 0 if self._quiet else min(4 * initial // total, 3)  # type: ignore[operator]

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._quiet or not self.total:
            return
        quarter = min(4 * self.n // self.total, 3)
        if quarter > self._quarter:
            self._quarter = quarter
            logger.info("%s: %d%% (%d/%d %s)", self.desc, 25 * quarter, self.n, self.total, self.unit)

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update(1)

    def close(self) -> None:
        """Nothing to clear (the tqdm interface)."""

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str,
    unit: str = "it",
    initial: int = 0,
    leave: bool = False,
) -> Any:
    """A tqdm bar on a terminal, else a :class:`LineProgress` (a few log lines); same ``update``/``close``/iteration.

    Args:
        iterable: What to iterate (or None and call ``update``).
        total: Steps in all (default ``len(iterable)``).
        desc: What is progressing (``epoch 3``, ``MOM-30``), shown first.
        unit: The step's name.
        initial: Steps already done (a resumed job).
        leave: Keep the finished bar on screen (terminal only).
    """
    if stderr_is_terminal():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial)
