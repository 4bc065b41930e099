"""MOM-30: sources (hash-pinned, safe unpickling), determinism, no instance leakage, label statistics, reader, CLI.

The sources are fetched once with pip / apt into ~/.cache/sadcl (or $SADCL_CACHE) and reused.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sadcl.config import DataConfig
from sadcl.data import build_dataset, mom30, mom30_generate, mom30_render
from sadcl.data.images import DataError
from sadcl.data.mom30 import generate_mom30, save_preview
from sadcl.data.mom30_render import Renderer
from sadcl.data.mom30_sources import CLASSES, UnsafePickleError, safe_load_pickle

SMALL = {"size": 64, "n_train": 300, "n_val": 40, "n_test": 160, "seed": 0}


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer(size=64, seed=0)


@pytest.fixture(scope="module")
def small(tmp_path_factory, renderer) -> Path:
    mom30_render._WORKER = renderer  # reuse the loaded pools: generation must not depend on who renders
    return generate_mom30(tmp_path_factory.mktemp("mom30") / "ds", progress=False, **SMALL)


def _records(root: Path, split: str) -> list[dict]:
    with open(root / f"{split}.jsonl") as f:
        return [json.loads(line) for line in f]


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "meta.json"
    }


def test_restricted_unpickler_accepts_arrays_rejects_code():
    arrays = (np.arange(6, dtype=np.uint8).reshape(2, 3), [np.zeros(2, np.float32)])
    for protocol in (2, 4):
        out = safe_load_pickle(pickle.dumps(arrays, protocol=protocol))
        assert np.array_equal(out[0], arrays[0]) and out[1][0].dtype == np.float32

    class Evil:
        def __reduce__(self):
            return os.system, ("echo pwned > /dev/null",)

    with pytest.raises(UnsafePickleError, match="posix.system|os.system|refusing"):
        safe_load_pickle(pickle.dumps(Evil()))
    with pytest.raises(UnsafePickleError, match="collections.OrderedDict"):
        safe_load_pickle(pickle.dumps(__import__("collections").OrderedDict(a=1)))
    with pytest.raises(UnsafePickleError, match="_codecs.encode"):
        safe_load_pickle(b"c_codecs\nencode\n(S'x'\nS'rot13'\ntR.")
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        safe_load_pickle(b"cbuiltins\neval\n(S'1+1'\ntR.")


def test_render_is_deterministic(renderer):
    other = Renderer(size=64, seed=0)
    for split, i in (("train", 0), ("val", 3), ("test", 7)):
        a, ra = renderer.render(split, i)
        b, rb = other.render(split, i)
        assert a.dtype == np.uint8 and a.shape == (64, 64, 3)
        assert np.array_equal(a, b) and ra == rb
    different = Renderer(size=64, seed=1)
    assert not np.array_equal(renderer.render("train", 0)[0], different.render("train", 0)[0])


def test_generation_same_bytes_and_resume(tmp_path, renderer, monkeypatch):
    mom30_render._WORKER = renderer
    params = {"size": 64, "n_train": 14, "n_val": 3, "n_test": 5, "seed": 3}
    ref = generate_mom30(tmp_path / "ref", progress=False, **params)
    # Interrupt a second run after its first chunk, then resume: the result must be byte-identical.
    monkeypatch.setattr(mom30_generate, "CHUNK", 4)
    real, calls = mom30_generate.render_chunk, []

    def flaky(*args):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(mom30_generate, "render_chunk", flaky)
    with pytest.raises(KeyboardInterrupt):
        generate_mom30(tmp_path / "resumed", progress=False, **params)
    assert not (tmp_path / "resumed" / "meta.json").exists()
    monkeypatch.setattr(mom30_generate, "render_chunk", real)
    generate_mom30(tmp_path / "resumed", progress=False, **params)
    assert _digest(ref) == _digest(tmp_path / "resumed")
    assert json.loads((ref / "meta.json").read_text())["params"]["seed"] == 3
    # idempotent, and a different parameter set is refused instead of overwriting
    generate_mom30(ref, progress=False, **params)
    with pytest.raises(ValueError, match="other parameters"):
        generate_mom30(ref, progress=False, **{**params, "seed": 4})


def test_no_instance_leakage(small, renderer):
    inst = {s: {i for r in _records(small, s) for i in r["instances"]} for s in ("train", "val", "test")}
    assert not inst["train"] & inst["test"] and not inst["val"] & inst["test"] and not inst["train"] & inst["val"]
    assert all(":test:" in i or i.startswith("animal:") for i in inst["test"])
    assert not any(":test:" in i for i in inst["train"] | inst["val"])
    # the pools themselves are disjoint (Animal-MNIST's 20 % hold-out included)
    pool = {s: set(np.concatenate(renderer.pool_ids[s]).tolist()) for s in ("train", "val", "test")}
    assert not pool["train"] & pool["test"] and not pool["train"] & pool["val"] and not pool["val"] & pool["test"]
    animal_test = {i for i in pool["test"] if i.startswith("animal:")}
    assert len(animal_test) == 2000


def test_label_statistics_and_records(small):
    recs = _records(small, "train") + _records(small, "test")
    n_labels = np.array([len(r["labels"]) for r in recs])
    assert abs(n_labels.mean() - 2.55) < 0.2 and n_labels.min() >= 1 and n_labels.max() <= 4
    assert {lab for r in recs for lab in r["labels"]} == set(CLASSES)
    for r in recs[:50]:
        assert sorted(b[4] for b in r["boxes"]) == r["labels"] and r["scene"] in mom30_render.SCENES
        for x0, y0, x1, y1, _ in r["boxes"]:
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            assert 18 <= max(x1 - x0, y1 - y0) <= 33
    assert (small / "classes.txt").read_text().split() == CLASSES
    meta = json.loads((small / "meta.json").read_text())
    assert meta["params"]["n_train"] == 300 and len(meta["sources"]) == 7
    with Image.open(small / recs[0]["image"]) as im:
        assert im.size == (64, 64) and im.mode == "RGB"


def test_reader_and_registry(small, tmp_path, monkeypatch):
    ds = build_dataset(DataConfig(format="mom30", root=str(small)), "val")
    assert len(ds) == 40 and ds.class_names == CLASSES and ds.targets.shape == (40, 30)
    assert ds.info[0]["scene"] in mom30_render.SCENES and ds.info[0]["boxes"]
    img, target, ignore = ds[0]
    assert img.size == (64, 64) and target.sum() == len(ds.info[0]["boxes"]) and not ignore.any()
    # the generic manifest reader reads the CSV too
    csv_ds = build_dataset(DataConfig(format="manifest", root=str(small)), "val")
    assert csv_ds.class_names == CLASSES and np.array_equal(csv_ds.targets, ds.targets)
    with pytest.raises(DataError, match="ask for"):
        build_dataset(DataConfig(format="mom30", root=str(small), options={"seed": 5}), "val")
    with pytest.raises(DataError, match="split 'dev'"):
        build_dataset(DataConfig(format="mom30", root=str(small)), "dev")
    # root=None generates into the cache, keyed by the parameters
    monkeypatch.setattr(mom30, "_cache_root", lambda: tmp_path / "cache")
    cfg = DataConfig(format="mom30", options={"n_train": 6, "n_val": 2, "n_test": 3, "progress": False})
    assert not mom30.is_generated(cfg)
    assert len(build_dataset(cfg, "test")) == 3 and mom30.is_generated(cfg)
    assert mom30.dataset_dir(cfg).name == "s64-tr6-va2-te3-seed0-v1"


def test_preview(small, tmp_path):
    out = save_preview(small, tmp_path / "p.png", n=9)
    with Image.open(out) as im:
        assert im.width >= 3 * 128 and im.height > 3 * 128


def test_cli_generates_dataset_and_preview(tmp_path, renderer, capsys):
    from sadcl.cli import main

    mom30_render._WORKER = None  # the CLI loads its own sources, as a user's run would
    out, png = tmp_path / "cli", tmp_path / "preview.png"
    rc = main(
        [
            "data",
            "mom30",
            "--out",
            str(out),
            "--size",
            "40",
            "--n-train",
            "6",
            "--n-val",
            "2",
            "--n-test",
            "3",
            "--seed",
            "2",
            "--preview",
            str(png),
            "--no-progress",
        ]
    )
    assert rc == 0
    assert (out / "meta.json").is_file() and len(list((out / "images" / "train").glob("*.png"))) == 6
    with Image.open(png) as im, Image.open(out / "images" / "test" / "000000.png") as first:
        assert im.width > 0 and first.size == (40, 40)
    assert "MOM-30 in" in capsys.readouterr().out


def test_bad_params():
    with pytest.raises(ValueError, match="size"):
        generate_mom30("/nonexistent/never", size=8)


def test_pool_arrays_match_sources(renderer):
    # digits come from MNIST as uint8 (pixels/256 in the pickle -> exact integers)
    glyph = renderer.pool["train"][0][0]
    assert glyph.dtype == np.uint8 and glyph.shape == (28, 28) and glyph.max() > 200
    buf = io.BytesIO()
    Image.fromarray(glyph).save(buf, "PNG")
    assert buf.tell() > 0


def _generate_in_child(out: str, queue) -> None:
    try:
        generate_mom30(out, size=64, n_train=8, n_val=4, n_test=4, seed=3, progress=False)
        queue.put("ok")
    except Exception as e:  # the parent reports it
        queue.put(f"{type(e).__name__}: {e}")


def test_two_processes_generating_the_same_directory_both_succeed(tmp_path) -> None:
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    out = tmp_path / "shared"
    procs = [ctx.Process(target=_generate_in_child, args=(str(out), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert results == ["ok", "ok"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "classes.txt",
            "images",
            "meta.json",
            *(f"{s}.{e}" for s in ("train", "val", "test") for e in ("csv", "jsonl")),
        ]
    )
    assert len((out / "train.csv").read_text().splitlines()) == 9  # header + 8 images, written once
