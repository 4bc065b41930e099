"""User text (class names, file names, config strings) made safe for the files sadcl writes.

Class names and paths come from the user's data, so a generated file must show them as text, never run or
reinterpret them:

- **Markdown** (the model card, tables the library writes): :func:`markdown_text` escapes HTML (``<script>``,
  ``<img onerror=...>`` are shown, not rendered), Markdown emphasis/link/code characters and the table separator
  ``|`` (a class named ``a|b`` stays one cell); :func:`markdown_code` makes an inline code span that no backtick in
  the text can close early.
- **CSV** (``per_class.csv``, ``predict --format csv``): :func:`csv_cell` neutralises spreadsheet formulas the usual
  way (OWASP "CSV injection"): a text cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets
  a leading ``'``, which spreadsheets read as "this is text" and do not display. Numbers sadcl formats itself (a
  negative ΔAP) are written as they are.
"""

from __future__ import annotations

import re

__all__ = ["CSV_FORMULA_START", "csv_cell", "markdown_code", "markdown_text"]

CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

# Backslash first, so that the escapes added for the others are not escaped again.
_MD_PUNCT = re.compile(r"([\\`*_\[\]|~#!])")
_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}


def markdown_text(text: object) -> str:
    """``text`` as literal Markdown text, safe in a paragraph, a heading or a table cell.

    HTML special characters become entities, Markdown punctuation (``\\ ` * _ [ ] | ~ # !``) is backslash-escaped and
    line breaks become spaces (a table row is one line).
    """
    s = " ".join(str(text).splitlines())
    s = _MD_PUNCT.sub(r"\\\1", s)
    return "".join(_HTML.get(ch, ch) for ch in s)


def markdown_code(text: object) -> str:
    """``text`` as an inline code span: fenced with one backtick more than its longest backtick run (CommonMark), so
    it shows verbatim (HTML included: code spans never render it). Line breaks become spaces. Not for table cells:
    GitHub tables split on ``|`` even inside code, so use :func:`markdown_text` there."""
    s = " ".join(str(text).splitlines())
    runs = [len(r) for r in re.findall(r"`+", s)]
    fence = "`" * (max(runs, default=0) + 1)
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def csv_cell(value: object) -> object:
    """A CSV cell that a spreadsheet will not evaluate: a string starting with ``= + - @``, tab or CR gets a leading
    ``'``; anything else (numbers included) is returned unchanged."""
    if isinstance(value, str) and value.startswith(CSV_FORMULA_START):
        return "'" + value
    return value
