"""Emoji: a built-in multi-label benchmark whose labels people wrote (the CLDR emoji keywords), made offline.

Images: the 64 px PNGs of two emoji vendors, Noto Emoji (Google, Apache 2.0) and Twemoji (Twitter, CC BY 4.0), from
the npm packages ``emoji-datasource-google`` / ``emoji-datasource-twitter`` (the packaging is MIT). Labels: the
CLDR annotation keywords (``tags``) of each emoji from ``emojibase-data`` ``en/data.json`` (MIT; the keywords are
Unicode CLDR data, written by people per locale). A skin-tone variant has its base emoji's tags.

Classes are the tags on at least ``min_emoji`` base emoji (default 20: 48 classes). An image is one emoji of one
vendor in one skin tone, on a white background; emoji without any class tag are left out. The split is **by base
emoji** (iterative stratification over the classes, seeded): no test emoji is seen in training in any vendor or skin
tone, so the benchmark measures generalisation to unseen emoji from the words people chose for them. Same
parameters, same bytes (images, manifests, ``meta.json``). Layout written::

    out_dir/classes.txt                     class names, one per line
    out_dir/images/<vendor>/<hexcode>.png   RGB, 64 x 64
    out_dir/<split>.jsonl                   image, labels, emoji, base, vendor, tone, name
    out_dir/meta.json                       parameters, source hashes, counts, label statistics (written last)

The generic manifest reader reads the splits (``read_manifest``); :func:`build` makes the dataset on first use in
``cache_dir()/emoji/<parameters>`` (``data.format: emoji``), like MOM-30.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from sadcl import sources
from sadcl.data.base import MultiLabelDataset, reader_options
from sadcl.data.images import DataError
from sadcl.data.manifest import read_manifest
from sadcl.io import atomic_write_bytes, atomic_write_text, file_lock, read_json

if TYPE_CHECKING:
    from sadcl.config import DataConfig

__all__ = ["SOURCES", "VENDORS", "build", "build_emoji", "dataset_dir", "default_params", "stratified_split"]

_logger = logging.getLogger(__name__)

VERSION = 1
"""Bumped whenever the same parameters would give other bytes."""
SPLITS = ("train", "val", "test")
VENDORS = {"google": "emoji-datasource-google", "twitter": "emoji-datasource-twitter"}
"""Vendor -> npm package (``img/<vendor>/64/<unified>.png`` and ``emoji.json`` inside)."""
SOURCES: dict[str, tuple[str, str]] = {
    "emoji-datasource-google": ("16.0.0", "fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438"),
    "emoji-datasource-twitter": ("16.0.0", "f64a530c63bca463bd8317fdc4615ce63a53a0c65018e4ce2d848aaba7a28877"),
    "emojibase-data": ("17.0.0", "d01d0e2ca4e22cb402679532155342c71e2e871f25c32223c013b8b166ebdf5a"),
}
"""npm package -> (version, SHA-256 of the registry tarball)."""
LICENSES = {
    "google": "Noto Emoji images: Apache License 2.0 (emoji-datasource README)",
    "twitter": "Twemoji images: CC BY 4.0 (emoji-datasource README)",
    "emojibase-data": "MIT (emojibase); tags are Unicode CLDR annotations",
}


def default_params(
    *,
    min_emoji: int = 20,
    fractions: Sequence[float] = (0.6, 0.15, 0.25),
    vendors: Sequence[str] = ("google", "twitter"),
    skin_tones: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """The parameter dict that identifies a built dataset (stored in ``meta.json``)."""
    fr = [float(f) for f in fractions]
    if len(fr) != 3 or min(fr) <= 0 or abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three positive numbers (train, val, test) summing to 1, got {fractions}")
    bad = sorted(set(vendors) - set(VENDORS))
    if bad or not vendors:
        raise ValueError(f"vendors {list(vendors)}: each must be one of {sorted(VENDORS)}")
    if int(min_emoji) < 2:
        raise ValueError(f"min_emoji must be >= 2, got {min_emoji}")
    return {
        "min_emoji": int(min_emoji),
        "fractions": fr,
        "vendors": sorted(set(vendors)),
        "skin_tones": bool(skin_tones),
        "seed": int(seed),
        "version": VERSION,
    }


def params_dirname(params: dict[str, Any]) -> str:
    """Cache directory name, e.g. ``n20-google+twitter-tones-seed0-v1-x1a2b3c4`` (the hash covers every parameter)."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
    tones = "tones" if params["skin_tones"] else "notones"
    return f"n{params['min_emoji']}-{'+'.join(params['vendors'])}-{tones}-seed{params['seed']}-v{VERSION}-x{digest}"


# ------------------------------------------------------------------------------------------------------ sources
def _hex(code: str) -> str:
    """One key for a code point sequence whatever its qualification (emojibase and emoji-datasource differ on FE0F)."""
    return "-".join(p for p in code.upper().split("-") if p != "FE0F")


class _Tarball:
    """Members of an npm tarball by their path under ``package/``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tar = tarfile.open(path, "r:gz")
        self._members = {m.name.split("/", 1)[-1]: m for m in self._tar.getmembers() if m.isfile()}

    def read(self, name: str) -> bytes:
        member = self._members.get(name)
        if member is None:
            raise DataError(f"{self.path}: no file package/{name}")
        f = self._tar.extractfile(member)
        assert f is not None  # a regular file
        return f.read()

    def has(self, name: str) -> bool:
        return name in self._members

    def close(self) -> None:
        self._tar.close()


def _fetch_sources(given: dict[str, str | os.PathLike] | None) -> dict[str, Path]:
    """Package -> tarball path: ``given`` ones as they are (tests, mirrors), the others fetched and SHA-256 checked."""
    given = dict(given or {})
    out = {}
    for package, (version, sha256) in SOURCES.items():
        out[package] = Path(given[package]) if package in given else sources.fetch_npm_tarball(package, version, sha256)
    return out


# ------------------------------------------------------------------------------------------------------ labels
def _records(emojibase: list[dict[str, Any]], skin_tones: bool) -> list[dict[str, Any]]:
    """One record per base emoji: hexcode, name, tags, and the hexcodes of its images (base first, then tones)."""
    out = []
    for e in emojibase:
        tags = sorted({str(t).strip().lower() for t in e.get("tags") or [] if str(t).strip()})
        if not tags:
            continue
        codes = [e["hexcode"]] + ([s["hexcode"] for s in e.get("skins") or []] if skin_tones else [])
        out.append({"base": e["hexcode"], "name": e.get("label", ""), "tags": tags, "codes": codes})
    return out


def stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> np.ndarray:
    """Iterative stratification (Sechidis et al., 2011) of items over splits.

    Items are taken rarest label first; each goes to the split that most lacks that label relative to its fraction
    (ties: the split most below its size, then the lowest index). Every class with enough items reaches every split.

    Args:
        labels: ``[N, C]`` 0/1 label matrix of the items (here: base emoji).
        fractions: Target share of each split.
        seed: Orders items with equal priority.

    Returns:
        ``[N]`` split index per item.
    """
    labels = np.asarray(labels, dtype=bool)
    n, _ = labels.shape
    frac = np.asarray(fractions, dtype=np.float64)
    want_label = frac[:, None] * labels.sum(0)[None, :]  # [S, C]
    want_size = frac * n
    split = np.full(n, -1)
    order = np.random.default_rng(seed).permutation(n)
    remaining = labels.copy()
    while (split < 0).any():
        counts = remaining[split < 0].sum(0)
        live = np.flatnonzero(counts > 0)
        if live.size == 0:  # items without labels: fill the splits by size
            for i in order:
                if split[i] < 0:
                    s = int(np.argmax(want_size))
                    split[i] = s
                    want_size[s] -= 1
            break
        c = live[np.argmin(counts[live])]  # the rarest label still to place
        for i in order:
            if split[i] < 0 and labels[i, c]:
                need = want_label[:, c]
                best = np.flatnonzero(need == need.max())
                s = int(best[np.argmax(want_size[best])]) if best.size > 1 else int(best[0])
                split[i] = s
                want_label[s] -= labels[i]
                want_size[s] -= 1
                remaining[i] = False
    return split


# ------------------------------------------------------------------------------------------------------- build
def build_emoji(
    out_dir: str | os.PathLike,
    *,
    source_files: dict[str, str | os.PathLike] | None = None,
    **params: Any,
) -> Path:
    """Build the emoji benchmark into ``out_dir`` (a no-op when it is already complete with these parameters).

    Args:
        out_dir: Output directory.
        source_files: npm package -> a local tarball to use instead of fetching it (tests, offline mirrors); the
            real build fetches the pinned versions of :data:`SOURCES` and checks their SHA-256.
        **params: See :func:`default_params`.

    Returns:
        ``out_dir``.
    """
    out = Path(out_dir)
    p = default_params(**params)
    out.mkdir(parents=True, exist_ok=True)
    with file_lock(out / ".lock"):
        meta = read_json(out / "meta.json")
        if meta is not None:
            if meta.get("params") != p:
                raise DataError(f"{out}: holds the emoji benchmark with {meta.get('params')}, not {p}")
            return out
        _build(out, p, _fetch_sources(source_files))
    return out


def _build(out: Path, p: dict[str, Any], tarballs: dict[str, Path]) -> None:
    base_tar = _Tarball(tarballs["emojibase-data"])
    try:
        records = _records(json.loads(base_tar.read("en/data.json")), p["skin_tones"])
    finally:
        base_tar.close()
    vendors = {v: _Tarball(tarballs[VENDORS[v]]) for v in p["vendors"]}
    try:
        images: dict[str, dict[str, str]] = {}  # vendor -> hex key -> member path
        for v, tar in vendors.items():
            table = {}
            for e in json.loads(tar.read("emoji.json")):
                for item in [e, *(e.get("skin_variations") or {}).values()]:
                    member = f"img/{v}/64/{item['image']}"
                    if item.get(f"has_img_{v}", True) and tar.has(member):
                        table[_hex(item["unified"])] = member
            images[v] = table
        # An image exists when every vendor has it (so the vendors show the same emoji set).
        for r in records:
            r["codes"] = [c for c in r["codes"] if all(_hex(c) in images[v] for v in p["vendors"])]
        records = [r for r in records if r["codes"]]
        counts = Counter(t for r in records for t in r["tags"])
        classes = sorted(t for t, k in counts.items() if k >= p["min_emoji"])
        if not classes:
            raise DataError(f"no tag is on {p['min_emoji']} base emoji; lower min_emoji")
        index = {c: i for i, c in enumerate(classes)}
        records = [r for r in records if any(t in index for t in r["tags"])]
        matrix = np.zeros((len(records), len(classes)), dtype=bool)
        for i, r in enumerate(records):
            matrix[i, [index[t] for t in r["tags"] if t in index]] = True
        split_of = stratified_split(matrix, p["fractions"], p["seed"])
        lines: dict[str, list[str]] = {s: [] for s in SPLITS}
        for i, r in enumerate(records):
            labels = [t for t in r["tags"] if t in index]
            for tone, code in enumerate(r["codes"]):
                for v, tar in vendors.items():
                    rel = f"images/{v}/{_hex(code).lower()}.png"
                    _write_image(tar.read(images[v][_hex(code)]), out / rel)
                    row = {"image": rel, "labels": labels, "base": r["base"], "vendor": v, "tone": tone}
                    lines[SPLITS[split_of[i]]].append(json.dumps({**row, "name": r["name"]}, ensure_ascii=False))
    finally:
        for tar in vendors.values():
            tar.close()
    atomic_write_text(out / "classes.txt", "".join(c + "\n" for c in classes))
    for s in SPLITS:
        atomic_write_text(out / f"{s}.jsonl", "".join(x + "\n" for x in lines[s]))
    stats = {}
    for k, s in enumerate(SPLITS):
        rows = matrix[split_of == k]
        n_img = len(lines[s])
        per_image = sum(len(json.loads(x)["labels"]) for x in lines[s]) / max(n_img, 1)
        stats[s] = {
            "base_emoji": int(rows.shape[0]),
            "images": n_img,
            "labels_per_image": round(per_image, 4),
            "min_class_base_emoji": int(rows.sum(0).min()),
        }
    meta = {
        "params": p,
        "classes": len(classes),
        "class_base_emoji": {c: int(counts[c]) for c in classes},
        "stats": stats,
        "sources": {pkg: {"version": SOURCES[pkg][0], "sha256": sources.sha256_file(tarballs[pkg])} for pkg in SOURCES},
        "licenses": {k: LICENSES[k] for k in (*p["vendors"], "emojibase-data")},
    }
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=1, sort_keys=True) + "\n")
    _logger.info("emoji benchmark in %s: %d classes, %s", out, len(classes), stats)


def _write_image(data: bytes, dest: Path) -> None:
    """The vendor's RGBA PNG on white, as an RGB PNG (the same bytes for the same input)."""
    if dest.is_file():  # an interrupted build already wrote it (atomically)
        return
    with Image.open(io.BytesIO(data)) as im:
        rgba = im.convert("RGBA")
    canvas = Image.new("RGB", rgba.size, (255, 255, 255))
    canvas.paste(rgba, mask=rgba.getchannel("A"))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=False)
    atomic_write_bytes(dest, buf.getvalue())


# ------------------------------------------------------------------------------------------------------ reader
_PARAM_OPTIONS = ("min_emoji", "fractions", "vendors", "skin_tones", "seed")


def _params(options: dict[str, Any]) -> dict[str, Any]:
    o = reader_options(options, _PARAM_OPTIONS, "emoji")
    try:
        return default_params(**o)
    except (TypeError, ValueError) as e:
        raise DataError(f"data.options for the emoji reader: {e}") from None


def dataset_dir(cfg: DataConfig) -> Path:
    """Where the emoji benchmark of a ``DataConfig`` lives: ``root``, or the user cache keyed by the parameters."""
    if cfg.root is not None:
        return Path(cfg.root)
    return sources.cache_dir() / "emoji" / params_dirname(_params(cfg.options))


def build(cfg: DataConfig, split: str, transform: Callable | None = None) -> MultiLabelDataset:
    """``DataConfig`` -> one split of the emoji benchmark, built on first use.

    Options (all optional): ``min_emoji``, ``fractions``, ``vendors``, ``skin_tones``, ``seed`` (see
    :func:`default_params`). With ``root=None`` the data lives in ``cache_dir()/emoji/<params>``.
    """
    if split not in SPLITS:
        raise DataError(f"emoji split {split!r}; expected one of {list(SPLITS)}")
    root = dataset_dir(cfg)
    if read_json(root / "meta.json") is None:
        _logger.info("building the emoji benchmark into %s (first use)", root)
    build_emoji(root, **{k: v for k, v in _params(cfg.options).items() if k != "version"})
    return read_manifest(
        root / f"{split}.jsonl", class_names=str(root / "classes.txt"), skip_bad=cfg.skip_bad, transform=transform
    )
