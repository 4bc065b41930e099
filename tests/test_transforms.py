"""Train/eval presets (docs/spec.md §3.5), MultiScaleCrop geometry, Cutout, normalisation lookup, worker seeding."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from sadcl.config import DataConfig
from sadcl.data import MultiLabelDataset, build_loader
from sadcl.data.loader import SeededDataset
from sadcl.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Cutout,
    EvalPreset,
    MultiScaleCrop,
    TrainPreset,
    build_transforms,
    resolve_normalization,
)


def photo(size: tuple[int, int] = (80, 60)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_eval_preset_resizes_and_normalises():
    img = Image.new("RGB", (50, 30), (255, 0, 128))
    x = EvalPreset(img_size=32)(img)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    expected = [(v / 255 - m) / s for v, m, s in zip((255, 0, 128), IMAGENET_MEAN, IMAGENET_STD)]
    assert torch.allclose(x[:, 5, 5], torch.tensor(expected), atol=1e-5)


@pytest.mark.parametrize("preset", ["crop", "cutout_randaug", "flip", "none"])
def test_train_presets_shape(preset):
    torch.manual_seed(0)
    x = TrainPreset(img_size=48, preset=preset)(photo())
    assert x.shape == (3, 48, 48) and x.dtype == torch.float32 and torch.isfinite(x).all()


def test_train_preset_is_reproducible_from_torch_seed():
    tf = TrainPreset(img_size=32, preset="cutout_randaug")
    torch.manual_seed(3)
    a = tf(photo())
    torch.manual_seed(3)
    assert torch.equal(a, tf(photo()))


def test_unknown_preset_and_normalization():
    with pytest.raises(ValueError, match="valid:.*cutout_randaug"):
        TrainPreset(img_size=32, preset="mixup")
    with pytest.raises(ValueError, match="imagenet"):
        resolve_normalization("zscore")


def test_multiscale_crop_matches_official_geometry():
    msc = MultiScaleCrop(448)
    pairs = msc.crop_pairs(512, 512)
    assert len(pairs) == 19
    assert {w for w, _ in pairs} == {512, 448, 384, 337, 256}
    assert (512, 384) in pairs and (512, 337) not in pairs  # |i - j| <= 2
    offs = msc.offsets(512, 512, 448, 448)
    assert len(offs) == 13 and len(set(offs)) == 13 and (64, 64) in offs and (32, 32) in offs  # step 16
    assert msc(photo((512, 512))).size == (448, 448)
    # sizes within 3 px of the target snap to it
    assert 96 in {w for w, _ in MultiScaleCrop(96).crop_pairs(110, 110)}  # int(110 * .875) = 96


def test_cutout_pil_and_tensor():
    torch.manual_seed(1)
    out = np.asarray(Cutout(16)(Image.new("RGB", (40, 40), (0, 0, 0))))
    changed = out.any(axis=2)
    ys, xs = np.nonzero(changed)
    assert 0 < changed.sum() <= 17 * 17 and ys.max() - ys.min() <= 16 and xs.max() - xs.min() <= 16
    assert len({tuple(p) for p in out[changed]}) == 1  # one colour
    t = Cutout(8)(torch.zeros(3, 20, 20))
    assert t.max() <= 1.0 and 0 < (t.sum(0) > 0).sum() <= 81


def test_resolve_normalization_backbone():
    assert resolve_normalization("imagenet") == (IMAGENET_MEAN, IMAGENET_STD)
    mean, std = resolve_normalization("backbone", "vit_base_patch16_clip_224.openai")
    assert abs(mean[0] - 0.4815) < 1e-3 and abs(std[0] - 0.2686) < 1e-3  # CLIP values from timm's config
    train_tf, eval_tf = build_transforms(DataConfig(train_preset="flip"), img_size=24, backbone="resnet18")
    assert train_tf.preset == "flip" and eval_tf(photo()).shape == (3, 24, 24)


def test_loader_workers_reproducible(tmp_path):
    paths = []
    for i in range(8):
        photo((40, 40)).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    ds = MultiLabelDataset(
        paths, np.ones((8, 2), np.float32), ["a", "b"], transform=TrainPreset(img_size=24, preset="crop")
    )

    def run():
        loader = build_loader(
            ds, batch_size=4, shuffle=True, workers=2, drop_last=False, seed=7, persistent_workers=False
        )
        return torch.cat([batch[0] for batch in loader])

    a, b = run(), run()
    assert a.shape == (8, 3, 24, 24) and torch.equal(a, b)


class _Draws(torch.utils.data.Dataset):
    """Each item is one draw from each global generator (torch CPU, random, numpy)."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> tuple[float, float, float]:
        return torch.rand(()).item(), random.random(), float(np.random.rand())


def test_seeded_dataset_draws_from_its_key_alone_and_leaves_the_global_generators_alone():
    ds = SeededDataset(_Draws(), seed=9)
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()
    first = ds[(2, 3)]
    assert ds[(2, 3)] == first and ds[(2, 2)] != first and ds[(1, 3)] != first and ds[3] == ds[(0, 3)]
    item_seed = (9 * 1_000_003 + 2 * 100_000_007 + 3) % (2**63 - 1)
    assert first[0] == torch.rand((), generator=torch.Generator().manual_seed(item_seed)).item()
    assert first[1] == random.Random(item_seed).random()
    assert first[2] == np.random.RandomState(item_seed % 2**32).rand()
    assert torch.equal(torch.get_rng_state(), states[0])
    assert random.getstate() == states[1]
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), states[2]))


def test_the_eval_transform_of_a_non_square_preprocessing_spec_has_its_size():
    from sadcl.ship.artifact import eval_transform_from

    spec = {"img_size": [24, 40], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    preset = eval_transform_from(spec)
    out = preset(photo())
    assert out.shape == (3, 24, 40)
    assert torch.equal(out, EvalPreset(img_size=(24, 40), mean=(0.5,) * 3, std=(0.5,) * 3)(photo()))
