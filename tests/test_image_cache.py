"""data.cache_images: the RAM cache of decoded, resized images gives bit-identical items and fails clearly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sadcl.config import DataConfig
from sadcl.data import MultiLabelDataset, build_dataset, build_loader, image_cache
from sadcl.data.images import DataError, ImageLoadError
from sadcl.data.loader import SeededDataset
from sadcl.data.transforms import PRESETS, EvalPreset, TrainPreset


@pytest.fixture(autouse=True)
def empty_cache():
    image_cache.clear_image_cache()
    yield
    image_cache.clear_image_cache()


def write_images(root, n: int = 6) -> list[str]:
    """PNG/JPEG files of different sizes and modes (RGB, grayscale, RGBA, palette): every decode rule is hit."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        h, w = 30 + 7 * i, 44 - 3 * i
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        img = [img, img.convert("L"), img.convert("RGBA"), img.convert("P")][i % 4]
        path = root / f"{i}.{'jpg' if i % 4 == 1 else 'png'}"
        img.save(path)
        paths.append(str(path))
    return paths


def dataset(paths, transform) -> MultiLabelDataset:
    targets = np.eye(len(paths), 3, dtype=np.float32)
    return MultiLabelDataset(paths, targets, ["a", "b", "c"], transform=transform)


@pytest.mark.parametrize("preset", PRESETS)
def test_cached_items_are_bit_identical_for_every_train_preset(tmp_path, preset):
    paths = write_images(tmp_path)
    plain = SeededDataset(dataset(paths, TrainPreset(img_size=24, preset=preset)), seed=3)
    keys = [(0, 0), (0, 1), (1, 2), (2, 3), (5, 4), (5, 5)]  # (epoch, index): different random draws
    want = [plain[key] for key in keys]
    cached = SeededDataset(dataset(paths, TrainPreset(img_size=24, preset=preset)).cache_images(), seed=3)
    for p in paths:  # the cached items must come from RAM, not from the files
        (tmp_path / p).unlink()
    for key, a in zip(keys, want):
        b = cached[key]
        assert torch.equal(a[0], b[0]), (preset, key)
        assert torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])


def test_cached_eval_items_are_identical_and_the_cache_is_shared_within_the_process(tmp_path):
    paths = write_images(tmp_path)
    expected = [dataset(paths, EvalPreset(img_size=(20, 28)))[i][0] for i in range(len(paths))]
    first = dataset(paths, EvalPreset(img_size=(20, 28))).cache_images()
    for p in paths:  # later datasets over the same files and the same resize read the cache, not the files
        (tmp_path / p).unlink()
    second = dataset(paths, EvalPreset(img_size=(20, 28))).cache_images()
    for i, want in enumerate(expected):
        assert torch.equal(first[i][0], want) and torch.equal(second[i][0], want)
    with pytest.raises(ImageLoadError, match="0.png"):  # another resize is not in the cache: the files are read
        dataset(paths, EvalPreset(img_size=16)).cache_images()


def test_a_transform_set_after_caching_reads_the_files_again(tmp_path):
    paths = write_images(tmp_path, n=2)
    ds = dataset(paths, EvalPreset(img_size=16)).cache_images()
    ds.transform = EvalPreset(img_size=12)  # another prepare step: the cached 16 px images do not fit it
    assert ds[0][0].shape == (3, 12, 12)
    assert torch.equal(ds[1][0], dataset(paths, EvalPreset(img_size=12))[1][0])
    decoded = dataset(paths, None).cache_images()  # no transform: the decoded images, valid under any transform
    decoded.transform = EvalPreset(img_size=12)
    assert torch.equal(decoded[1][0], dataset(paths, EvalPreset(img_size=12))[1][0])


def test_cached_batches_equal_uncached_ones_through_loader_workers(tmp_path):
    paths = write_images(tmp_path, n=8)

    def batches(ds, workers):
        loader = build_loader(SeededDataset(ds, 1), batch_size=4, shuffle=True, workers=workers, seed=5)
        return torch.cat([b[0] for b in loader])

    want = batches(dataset(paths, TrainPreset(img_size=24, preset="crop")), 0)
    cached = dataset(paths, TrainPreset(img_size=24, preset="crop")).cache_images()
    for p in paths:  # workers must read the copy they inherited, not the files
        (tmp_path / p).unlink()
    assert torch.equal(batches(cached, 0), want)
    assert torch.equal(batches(cached, 2), want)


def test_cache_larger_than_half_the_memory_fails_clearly(tmp_path, monkeypatch):
    paths = write_images(tmp_path, n=4)
    monkeypatch.setattr(image_cache, "available_memory", lambda: 2 * 24 * 24 * 3 * 4 - 1)
    with pytest.raises(DataError, match=r"data.cache_images: the 'x' split \(4 images.*set data.cache_images=false"):
        dataset(paths, EvalPreset(img_size=24)).cache_images(what="the 'x' split")
    monkeypatch.setattr(image_cache, "available_memory", lambda: 2 * 24 * 24 * 3 * 4)
    assert len(dataset(paths, EvalPreset(img_size=24)).cache_images()._image_cache[1]) == 4


def test_an_unreadable_image_is_named_when_the_cache_is_filled(tmp_path):
    paths = write_images(tmp_path, n=3)
    (tmp_path / "2.png").write_bytes(b"not an image")
    with pytest.raises(ImageLoadError, match=r"2\.png: not a recognised image file"):
        dataset(paths, EvalPreset(img_size=16)).cache_images()


def test_build_dataset_caches_only_when_asked_and_with_a_transform(tmp_path):
    paths = write_images(tmp_path, n=4)
    (tmp_path / "m.csv").write_text("image,labels\n" + "".join(f"{p},a\n" for p in paths))
    cfg = DataConfig(format="manifest", root=str(tmp_path), options={"manifest": "m.csv"}, cache_images=True)
    assert build_dataset(cfg, "train", EvalPreset(img_size=16), cache_images=True)._image_cache is not None
    assert build_dataset(cfg, "train", cache_images=True)._image_cache is None  # nothing will decode images
    # One-pass commands (evaluate, thresholds, calibration) build from the run's config and read the files.
    assert build_dataset(cfg, "train", EvalPreset(img_size=16))._image_cache is None


@pytest.mark.parametrize(("preset", "reused"), [("flip", True), ("crop", False)])
def test_a_run_caches_its_splits_and_frees_them_when_it_ends_or_fails(tmp_path, monkeypatch, preset, reused):
    from sadcl.config import Config, TrainConfig
    from sadcl.data import base
    from sadcl.training.train import run_training
    from support.models import tiny_model_config

    paths = write_images(tmp_path, n=10)
    rows = [f"{p},{'ab'[i % 2]}\n" for i, p in enumerate(paths)]
    for split, part in (("train", rows[:6]), ("val", rows[6:8]), ("test", rows[8:])):
        (tmp_path / f"{split}.csv").write_text("image,labels\n" + "".join(part))
    data = DataConfig(
        format="manifest",
        root=str(tmp_path),
        train_preset=preset,
        cache_images=True,
        workers=0,
        batch_size=2,
    )

    def config(out: str) -> Config:
        train = TrainConfig(epochs=1, baseline_epochs=1, output_dir=str(tmp_path / out), progress=False)
        model = tiny_model_config(num_classes=2, img_size=32, proj_dim=8, bank_slots=2)
        return Config(model=model, data=data, train=train)

    reads: list[tuple[bool, bool]] = []  # (fill, served from RAM) of every dataset's cache call

    def spy(*args, **kwargs):
        arrays = real(*args, **kwargs)
        reads.append((kwargs.get("fill", True), arrays is not None))
        return arrays

    real = base.cached_images
    monkeypatch.setattr(base, "cached_images", spy)
    outer = dataset(paths[:2], EvalPreset(img_size=8)).cache_images()  # the caller's own entry
    during: dict[str, set[int]] = {}
    run_training(config("run"), hook=lambda stage, e, s: during.setdefault(stage, set()).add(len(image_cache._STORE)))
    # The caller's entry, the training, val and test splits, in both stages: the prototype pass never fills a copy.
    assert during == {"baseline": {4}, "sadcl": {4}}
    assert (False, reused) in reads  # the prototype pass reuses the training split when it is held at the eval size
    assert len(image_cache._STORE) == 1 and outer[0][0].shape == (3, 8, 8)  # the run's went, the caller's stayed

    def fail(stage: str, epoch: int, step: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(config("failed"), hook=fail)
    assert len(image_cache._STORE) == 1  # an interrupted run frees its entries too


def test_every_process_of_the_machine_counts_against_the_memory_check(tmp_path, monkeypatch):
    paths = write_images(tmp_path, n=4)
    need = 4 * 24 * 24 * 3  # bytes of the 4 resized images
    monkeypatch.setattr(image_cache, "available_memory", lambda: 3 * need)  # room for one copy, not for two
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(DataError, match="in each of the 2 processes of this machine"):
        dataset(paths, EvalPreset(img_size=24)).cache_images()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert len(dataset(paths, EvalPreset(img_size=24)).cache_images()._image_cache[1]) == 4


@pytest.mark.parametrize(
    ("files", "room"),
    [
        ({"memory.max": "1000\n", "memory.current": "400\n"}, 600),  # cgroup v2 with a limit
        # the page cache the kernel reclaims first does not count as used
        ({"memory.max": "1000", "memory.current": "900", "memory.stat": "anon 100\ninactive_file 700\n"}, 800),
        ({"memory.max": "1000"}, None),  # no usage file: unknown, no cap
        (  # v1 with a limit and page cache
            {
                "memory/memory.limit_in_bytes": "1000",
                "memory/memory.usage_in_bytes": "600",
                "memory/memory.stat": "cache 500\ntotal_inactive_file 300\n",
            },
            700,
        ),
        ({"memory.max": "max\n", "memory.current": "400\n"}, None),  # v2 without one
        ({"memory/memory.limit_in_bytes": "9223372036854771712", "memory/memory.usage_in_bytes": "5"}, None),  # v1
        ({"memory/memory.limit_in_bytes": "300", "memory/memory.usage_in_bytes": "500"}, 0),
        ({}, None),  # no cgroup files
    ],
)
def test_the_available_memory_is_capped_by_the_cgroup_limit(tmp_path, monkeypatch, files, room):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert image_cache._cgroup_room(str(tmp_path)) == room
    monkeypatch.setattr(image_cache, "_cgroup_room", lambda: room)
    free = image_cache.available_memory()
    assert free is not None and (room is None or free <= room)
