"""The emoji benchmark: built from npm tarballs (a fixture the test writes), split by base emoji, deterministic; the
npm fetcher (download once, SHA-256 checked, cached); the reader behind ``data.format=emoji``."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sadcl import sources
from sadcl.config import DataConfig
from sadcl.data import build_dataset
from sadcl.data.emoji import build_emoji, stratified_split
from sadcl.data.images import DataError

TAGS = ["animal", "face", "food", "heart", "hand"]


def _png(colour: tuple[int, int, int]) -> bytes:
    im = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # transparent: the builder puts it on white
    im.paste((*colour, 255), (16, 16, 48, 48))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _tarball(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def tarballs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """40 base emoji (4 with 5 skin tones), tags drawn from TAGS, one rare tag; two vendors with every image but one."""
    root = tmp_path_factory.mktemp("npm")
    rng = np.random.default_rng(0)
    base, vendors = [], {"google": [], "twitter": []}
    for i in range(40):
        code = f"1F{0x600 + i:03X}"
        tags = sorted(set(rng.choice(TAGS, size=int(rng.integers(1, 3)), replace=False).tolist()))
        if i == 0:
            tags.append("rare")  # on one base emoji only: never a class
        entry = {"label": f"emoji {i}", "hexcode": code, "tags": tags, "emoji": "?", "type": 1}
        skins = {}
        if i < 4:
            entry["skins"] = [
                {"label": f"emoji {i} tone {t}", "hexcode": f"{code}-1F3F{t + 0xA:X}"} for t in range(1, 6)
            ]
            skins = {str(t): {"unified": s["hexcode"], "image": f"{s['hexcode'].lower()}.png"} for t, s in
                     enumerate(entry["skins"])}  # fmt: skip
        base.append(entry)
        for v in vendors:
            vendors[v].append({"unified": code, "image": f"{code.lower()}.png", "skin_variations": skins})
    base.append({"label": "untagged", "hexcode": "1F700", "emoji": "?", "type": 1})
    files = {v: {"emoji.json": json.dumps(rows).encode()} for v, rows in vendors.items()}
    for v, rows in vendors.items():
        for k, row in enumerate(rows):
            for item in [row, *row["skin_variations"].values()]:
                if v == "twitter" and item["unified"] == "1F627":  # one image missing in one vendor
                    continue
                files[v][f"img/{v}/64/{item['image']}"] = _png((k * 6 % 255, 40, 200 if v == "google" else 90))
    return {
        "emojibase-data": _tarball(root / "base.tgz", {"en/data.json": json.dumps(base).encode()}),
        "emoji-datasource-google": _tarball(root / "google.tgz", files["google"]),
        "emoji-datasource-twitter": _tarball(root / "twitter.tgz", files["twitter"]),
    }


def _build(out: Path, tarballs: dict[str, Path], **params) -> Path:
    return build_emoji(out, source_files=tarballs, min_emoji=4, fractions=(0.5, 0.25, 0.25), **params)


def test_build_splits_by_base_emoji_and_is_deterministic(tarballs: dict[str, Path], tmp_path: Path) -> None:
    a = _build(tmp_path / "a", tarballs)
    b = _build(tmp_path / "b", tarballs)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != ".lock")
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.name != ".lock")
    for rel in files_a:  # same parameters, same bytes
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    classes = (a / "classes.txt").read_text().split()
    assert classes == sorted(TAGS)  # "rare" is on one base emoji only
    rows = {s: [json.loads(x) for x in (a / f"{s}.jsonl").read_text().splitlines()] for s in ("train", "val", "test")}
    bases = {s: {r["base"] for r in rs} for s, rs in rows.items()}
    assert not (bases["train"] & bases["val"] or bases["train"] & bases["test"] or bases["val"] & bases["test"])
    everything = [r for rs in rows.values() for r in rs]
    assert {r["vendor"] for r in everything} == {"google", "twitter"}
    assert all(r["labels"] and set(r["labels"]) <= set(classes) for r in everything)
    # Skin tones inherit the base's tags and stay in its split; the image missing in one vendor is left out of both.
    toned = [r for r in everything if r["base"] == "1F600"]
    assert len(toned) == 2 * 6 and len({tuple(r["labels"]) for r in toned}) == 1
    assert not any("1f627" in r["image"] for r in everything)
    assert "1F700" not in {r["base"] for r in everything}  # untagged
    with Image.open(a / everything[0]["image"]) as im:
        assert im.mode == "RGB" and im.size == (64, 64) and im.getpixel((0, 0)) == (255, 255, 255)
    meta = json.loads((a / "meta.json").read_text())
    assert meta["classes"] == len(classes) and meta["stats"]["train"]["images"] == len(rows["train"])
    assert all(meta["stats"][s]["min_class_base_emoji"] >= 1 for s in ("train", "val", "test"))


def test_reader_and_parameter_checks(tarballs: dict[str, Path], tmp_path: Path) -> None:
    root = _build(tmp_path / "e", tarballs)
    cfg = DataConfig(format="emoji", root=str(root), options={"min_emoji": 4, "fractions": [0.5, 0.25, 0.25]})
    ds = build_dataset(cfg, "val")
    assert ds.class_names == sorted(TAGS) and len(ds) > 0 and ds.targets.sum(1).min() >= 1
    with pytest.raises(DataError, match="other|holds"):  # a built folder is never relabelled with other parameters
        build_dataset(DataConfig(format="emoji", root=str(root), options={"min_emoji": 5}), "val")
    with pytest.raises(DataError, match="unknown key"):
        build_dataset(DataConfig(format="emoji", root=str(root), options={"min_emojis": 4}), "val")
    with pytest.raises(DataError, match="fractions"):
        build_dataset(DataConfig(format="emoji", root=str(tmp_path / "x"), options={"fractions": [0.5, 0.5]}), "val")


def test_stratified_split_reaches_every_split() -> None:
    rng = np.random.default_rng(1)
    labels = rng.random((300, 12)) < np.linspace(0.02, 0.4, 12)
    labels[:, 0] = False
    labels[:12, 0] = True  # a rare class: 12 items
    split = stratified_split(labels, (0.6, 0.15, 0.25), seed=0)
    assert set(split.tolist()) == {0, 1, 2}
    for s, share in enumerate((0.6, 0.15, 0.25)):
        assert abs((split == s).mean() - share) < 0.05
        assert labels[split == s].sum(0).min() >= 1  # every class in every split
    assert np.array_equal(split, stratified_split(labels, (0.6, 0.15, 0.25), seed=0))


def test_fetch_npm_tarball_checks_and_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = tmp_path / "registry"
    tgz = _tarball(tmp_path / "x.tgz", {"a.txt": b"hello"})
    (registry / "some-pkg" / "-").mkdir(parents=True)
    (registry / "some-pkg" / "-" / "some-pkg-1.0.0.tgz").write_bytes(tgz.read_bytes())
    monkeypatch.setenv("SADCL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SADCL_NPM_REGISTRY", registry.as_uri())
    digest = hashlib.sha256(tgz.read_bytes()).hexdigest()
    with pytest.raises(sources.SourceError, match="SHA-256 mismatch"):
        sources.fetch_npm_tarball("some-pkg", "1.0.0", "0" * 64)
    assert not (tmp_path / "cache" / "sources" / "npm" / "some-pkg-1.0.0.tgz").exists()
    path = sources.fetch_npm_tarball("some-pkg", "1.0.0", digest)
    assert path.read_bytes() == tgz.read_bytes()
    (registry / "some-pkg" / "-" / "some-pkg-1.0.0.tgz").unlink()  # cached: the registry is not asked again
    assert sources.fetch_npm_tarball("some-pkg", "1.0.0", digest) == path
    with pytest.raises(sources.SourceError, match="could not download other-pkg@2.0.0"):
        sources.fetch_npm_tarball("other-pkg", "2.0.0", None)
