"""Attention maps (upsampling, box fraction, grid), the box score over samples, label features and t-SNE plots."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sadcl.inference.attention import (
    attention_box_score,
    attention_grid,
    attention_in_box_fraction,
    label_attention,
    upsample_attention,
)
from sadcl.inference.embeddings import collect_label_features, embedding_tsne, plot_embedding_panels, separation_score
from support.models import EvalTransform, tiny_model

NAMES = ["cat", "dog", "digit_0", "bag", "zebra"]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_model(num_classes=len(NAMES))


def _image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (80, 100, 3), dtype=np.uint8))


def test_upsample_keeps_mass_and_sign() -> None:
    attn = torch.rand(2, 3, 2, 2)
    attn = attn / attn.sum(dim=(-2, -1), keepdim=True)
    up = upsample_attention(attn, (64, 64))
    assert up.shape == (2, 3, 64, 64)
    assert torch.all(up >= 0)
    torch.testing.assert_close(up.sum(dim=(-2, -1)), torch.ones(2, 3))


def test_attention_in_box_fraction() -> None:
    a = np.zeros((10, 10))
    a[2:4, 2:4] = 1.0  # all mass in pixels x, y in {2, 3}
    assert attention_in_box_fraction(a, (2, 2, 4, 4)) == pytest.approx(1.0)
    assert attention_in_box_fraction(a, (0, 0, 10, 10)) == pytest.approx(1.0)
    assert attention_in_box_fraction(a, (2, 2, 3, 4)) == pytest.approx(0.5)  # pixel centres 2.5 in, 3.5 out
    assert attention_in_box_fraction(a, (5, 5, 9, 9)) == 0.0
    assert attention_in_box_fraction(np.zeros((4, 4)), (0, 0, 4, 4)) == 0.0
    uniform = np.ones((8, 8))
    assert attention_in_box_fraction(torch.from_numpy(uniform), (0, 0, 4, 8)) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        attention_in_box_fraction(a, (4, 4, 2, 2))


def test_label_attention_and_grid(model) -> None:
    result = label_attention(
        model, _image(), class_names=NAMES, transform=EvalTransform(), threshold=0.0, top_k=3, display_size=128
    )
    assert result.scores.shape == (5,) and len(result.labels) == 3
    assert [la.score for la in result.labels] == sorted((la.score for la in result.labels), reverse=True)
    for la in result.labels:
        assert la.attn.shape == (64, 64) and la.attn.sum() == pytest.approx(1.0, rel=1e-4)
        assert la.overlay.size == result.image.size == (128, 128)
    # With a threshold nobody reaches, the top label is still shown.
    none = label_attention(model, _image(), class_names=NAMES, transform=EvalTransform(), threshold=1.0)
    assert len(none.labels) == 1 and none.labels[0].index == int(np.argmax(none.scores))
    # top_k means what it means in predict: at most k of the labels above threshold (never more than pass it).
    thr = np.sort(result.scores)[-2] - 1e-6  # exactly the two best pass
    two = label_attention(model, _image(), class_names=NAMES, transform=EvalTransform(), threshold=thr, top_k=3)
    assert [la.index for la in two.labels] == list(np.argsort(-result.scores)[:2])

    shown = label_attention(
        model, _image(), class_names=NAMES, transform=EvalTransform(), threshold=0.0, top_k=2, display_size=96
    )
    grid = attention_grid(shown)
    assert grid.mode == "RGB" and grid.width > 3 * 96
    assert np.asarray(grid).std() > 10  # not a blank canvas


def test_attention_box_score(model) -> None:
    tf = EvalTransform()
    samples = []
    for i in range(3):
        target = torch.ones(5)  # everything true, and threshold 0: every class is a "predicted true label"
        boxes = [(c, (0.0, 0.0, 40.0, 32.0)) for c in range(5)]  # in original 80x64 coordinates -> half of the input
        samples.append((tf(_image(i)), target, boxes))
    score = attention_box_score(model, samples, threshold=0.0, box_scale=(64 / 80, 64 / 64), batch_size=2)
    assert score["num_images"] == 3 and score["num_pairs"] == 15
    assert 0.0 <= score["mean_fraction"] <= 1.0
    assert score["mean_box_area_fraction"] == pytest.approx((32 * 32) / (64 * 64))
    assert set(score["per_class"]) == set(range(5))
    empty = attention_box_score(model, [(tf(_image()), torch.zeros(5), [])], threshold=0.0)
    assert empty["num_pairs"] == 0 and np.isnan(empty["mean_fraction"])


def test_collect_label_features_and_tsne(model, tmp_path) -> None:
    tf = EvalTransform()
    rng = np.random.default_rng(0)
    dataset = [(tf(_image(i)), torch.from_numpy((rng.random(5) < 0.5).astype(np.float32))) for i in range(12)]
    feats, labels = collect_label_features(model, dataset, n=20, batch_size=5)
    total = int(sum(t.sum() for _, t in dataset))
    assert feats.shape == (min(20, total), 32) and labels.shape == (min(20, total),)
    # Same order as the dataset's (image, true label) pairs.
    first = [c for c in range(5) if dataset[0][1][c] > 0.5]
    assert labels[: len(first)].tolist() == first

    out = tmp_path / "tsne.png"
    xy = embedding_tsne(feats, labels, out, class_names=NAMES, perplexity=5)
    assert xy.shape == (len(feats), 2) and out.stat().st_size > 5000
    with Image.open(out) as im:
        assert np.asarray(im.convert("L")).std() > 5

    two = tmp_path / "compare.png"
    coords = plot_embedding_panels(
        [("baseline", feats, labels), ("sadcl", feats * 2, labels)], two, class_names=NAMES, perplexity=5
    )
    assert len(coords) == 2 and two.stat().st_size > 5000
    assert -1.0 <= separation_score(feats, labels) <= 1.0
    # Well-separated clusters score high.
    centres = np.eye(4, 16) * 10
    clustered = np.concatenate([centres[k] + rng.normal(0, 0.1, (10, 16)) for k in range(4)])
    assert separation_score(clustered, np.repeat(np.arange(4), 10)) > 0.8


def test_mom30_box_samples_and_score(tmp_path) -> None:
    from sadcl.config import Config
    from sadcl.data import build_dataset
    from sadcl.data.mom30 import generate_mom30, mom30_box_samples
    from sadcl.data.transforms import build_eval_transform
    from sadcl.models import build_model

    generate_mom30(tmp_path / "mom", size=64, n_train=4, n_val=4, n_test=8, seed=0, progress=False, workers=1)
    cfg = Config.from_dict(
        {
            "model": {
                "backbone": "resnet18",
                "pretrained": False,
                "img_size": 96,
                "num_classes": 30,
                "hidden_dim": 32,
                "nhead": 4,
                "dim_feedforward": 64,
                "contrastive": False,
            },
            "data": {"format": "mom30", "root": str(tmp_path / "mom")},
        }
    )
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    samples, scale = mom30_box_samples(build_dataset(cfg.data, "test", build_eval_transform(cfg)), limit=8)
    assert scale == pytest.approx((1.5, 1.5))
    score = attention_box_score(model, samples, threshold=0.0, box_scale=scale)
    assert score["num_images"] == 8 and score["num_pairs"] > 0
    # An untrained model attends almost uniformly: its in-box fraction is close to the boxes' area fraction.
    assert abs(score["mean_fraction"] - score["mean_box_area_fraction"]) < 0.1
