"""The ``sadcl`` command line: each subcommand lives in its own module with ``add_parser`` and ``run``.

A subcommand module parses its arguments, builds a Config where needed, and calls the library; nothing else.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from sadcl import __version__

# name -> module under sadcl.cli. Modules are imported only for the command that runs (fast --help, light deps).
COMMANDS = {
    "train": "train",
    "ablate": "ablate",
    "build-prototypes": "build_prototypes",
    "evaluate": "evaluate",
    "predict": "predict",
    "data": "data",
    "export": "export",
    "tune-thresholds": "thresholds",
    "visualize": "visualize",
    "serve": "serve",
    "report": "report",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sadcl", description="SADCL multi-label image classification")
    parser.add_argument("--version", action="version", version=f"sadcl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        try:
            mod = importlib.import_module(f"sadcl.cli.{module}")
        except ModuleNotFoundError as e:
            if e.name != f"sadcl.cli.{module}":
                raise
            continue  # subcommand not available in this build
        mod.add_parser(sub, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # Config overrides may come after the options too (`sadcl train --output-dir X a.b=1`).
        if hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    level = logging.DEBUG if args.verbose else logging.INFO
    if int(os.environ.get("RANK", 0) or 0) != 0:
        level = logging.WARNING  # under torchrun only rank 0 reports progress; the others still warn and fail loudly
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError as e:
        if not _stdout_closed():
            print(f"sadcl {args.command}: error: {one_line(e)}", file=sys.stderr)
            return 2
        # `sadcl predict ... | head`: the reader of our output left; nothing is wrong. Point stdout at devnull so
        # that the interpreter's final flush does not complain (the Python docs' recipe).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ValueError, OSError, RuntimeError, FloatingPointError) as e:
        # User-facing errors (bad config, bad file, bad input) end with one clear line, not a traceback.
        if args.verbose:
            raise
        if isinstance(e, OSError):
            from sadcl.sources import cache_write_error

            e = cache_write_error(e)  # a read-only sadcl cache: say which directory and how to move it
        print(f"sadcl {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2


def _stdout_closed() -> bool:
    """Whether standard output is a pipe whose reader has gone (poll reports an error on its write end)."""
    import select

    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (captured, or closed): not a broken pipe
        return False
    if not hasattr(select, "poll"):  # Windows: no poll(); a broken pipe there is almost always stdout's
        return True
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))


def one_line(error: BaseException) -> str:
    """The message of an error for the terminal; an error raised in a DataLoader worker is unwrapped to its own
    last line (PyTorch embeds the worker's whole traceback in the message)."""
    text = str(error)
    if "Original Traceback" in text:
        last = [line for line in text.strip().splitlines() if line.strip()][-1]
        name, sep, message = last.partition(": ")
        return message if sep and ("." in name or name.endswith("Error")) else last
    return text


if __name__ == "__main__":
    sys.exit(main())
