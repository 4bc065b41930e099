"""Every ``docs/spec.md §N`` cited in the code, tests, benchmarks, configs and docs is a heading of docs/spec.md."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "docs" / "spec.md"
SEARCHED = ["src", "tests", "benchmarks", "configs", "docs", "README.md", "BENCHMARKS.md"]
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".txt", ".toml"}

SECTION = r"§(\d+(?:\.\d+)*)"
# A citation and the sections chained after it: "docs/spec.md §1.9, §3.3", "docs/spec.md §2.2/§2.3".
CITATION = re.compile(r"docs/spec\.md ((?:" + SECTION + r"(?:\s*(?:,|/|and|or)\s*)?)+)")
# The old citation of a file outside the repository, split so that a rewrite of the citations leaves it alone.
OLD = "SPEC" + " §"
HEADING = re.compile(r"^#{2,4} (\d+(?:\.\d+)*)\.? ", re.MULTILINE)


def spec_headings(text: str) -> set[str]:
    """Section numbers that are headings (``## 1. Architecture`` -> ``1``, ``### 1.8 Bank`` -> ``1.8``)."""
    return set(HEADING.findall(text))


def cited_sections(text: str) -> set[str]:
    """Section numbers cited as ``docs/spec.md §N`` in ``text``, including chained ones (``§1.9, §3.3``)."""
    return {num for chain in CITATION.finditer(text) for num in re.findall(SECTION, chain.group(1))}


def _files() -> list[Path]:
    out = []
    for name in SEARCHED:
        path = ROOT / name
        out += [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES)
    return [p for p in out if p.is_file() and p != SPEC]


def test_helpers_find_headings_and_chained_citations() -> None:
    assert spec_headings("## 1. Architecture\n### 1.8 Bank\n#### 9.3 Keys\ntext §4\n") == {"1", "1.8", "9.3"}
    text = "see docs/spec.md §1.9, §3.3 and docs/spec.md §2.2/§2.3; " + OLD + "7 is not a citation of ours"
    assert cited_sections(text) == {"1.9", "3.3", "2.2", "2.3"}


def test_every_citation_resolves() -> None:
    headings = spec_headings(SPEC.read_text(encoding="utf-8"))
    dangling = []
    for path in _files():
        text = path.read_text(encoding="utf-8", errors="replace")
        dangling += [f"{path.relative_to(ROOT)}: §{n}" for n in sorted(cited_sections(text) - headings)]
    assert not dangling, "citations of sections docs/spec.md does not have: " + ", ".join(dangling)


def test_the_code_cites_the_spec_and_not_the_old_file() -> None:
    files = _files()
    assert sum(bool(cited_sections(p.read_text(encoding="utf-8", errors="replace"))) for p in files) >= 20
    stale = [
        str(p.relative_to(ROOT))
        for p in files
        if p != Path(__file__).resolve() and OLD in p.read_text(encoding="utf-8", errors="replace")
    ]
    assert not stale, f"'{OLD}' cites a file outside the repository; cite docs/spec.md instead in: {stale}"
