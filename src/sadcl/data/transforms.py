"""Train/eval image presets reproducing the official pipelines (docs/spec.md §3.5), built on torchvision.transforms.v2.

- ``crop`` (official stage 2): ``Resize((s+64, s+64))`` -> :class:`MultiScaleCrop` -> horizontal flip.
- ``cutout_randaug`` (official stage 1): ``Resize((s, s))`` -> :class:`Cutout` (1 hole, side s/2, random colour) ->
  RandAugment. We use torchvision's ``v2.RandAugment`` (2 ops, magnitude 9 of 31, 14 ops incl. identity, every op
  always applied); the official code uses the PyPI ``randaugment`` 1.0.2 package (UDA-style: 15 ops, random
  magnitude 1..9, each op applied with p=0.5), which breaks with numpy >= 1.24. So this preset is close to, not
  identical with, the official one.
- ``flip``: ``Resize((s, s))`` -> horizontal flip. ``none``: the eval transform.

All end in ``ToImage -> float in [0, 1] -> Normalize``. Each preset is ``finish(prepare(img))``: ``prepare`` is the
deterministic leading resize, which ``data.cache_images`` computes once per image (:mod:`sadcl.data.image_cache`).
Randomness comes from ``torch``'s generator (not Python's ``random``), so loader worker seeding covers it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image, ImageDraw
from torchvision.transforms import v2

_logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRESETS = ("crop", "cutout_randaug", "flip", "none")


def _randint(high: int) -> int:
    """Uniform integer in [0, high) from torch's RNG."""
    return int(torch.randint(high, (1,)).item())


class MultiScaleCrop(torch.nn.Module):
    """The official MultiScaleCrop: a crop of one of 19 (w, h) scale pairs at one of 13 fixed offsets, resized.

    Crop sides are ``int(min(W, H) * scale)`` for scales (1, .875, .75, .66, .5), snapped to ``size`` when within
    3 px; a pair (w_j, h_i) is allowed when ``|i - j| <= max_distort``. Offsets: 4 corners, centre, 4 edge centres
    and 4 quarter points, on a grid of step ``(W - w) // 4`` by ``(H - h) // 4``.

    Args:
        size: Output side (the crop is resized to ``size x size``, bilinear).
        scales: Relative crop sides.
        max_distort: Largest index distance between the width and height scales.
    """

    def __init__(self, size: int, scales: Sequence[float] = (1.0, 0.875, 0.75, 0.66, 0.5), max_distort: int = 2):
        super().__init__()
        self.size = size
        self.scales = tuple(scales)
        self.max_distort = max_distort

    def crop_pairs(self, width: int, height: int) -> list[tuple[int, int]]:
        """All allowed (crop_w, crop_h) for an input of this size."""
        base = min(width, height)
        sides = [int(base * s) for s in self.scales]
        sides = [self.size if abs(x - self.size) < 3 else x for x in sides]
        return [(w, h) for i, h in enumerate(sides) for j, w in enumerate(sides) if abs(i - j) <= self.max_distort]

    @staticmethod
    def offsets(width: int, height: int, crop_w: int, crop_h: int) -> list[tuple[int, int]]:
        """The 13 fixed (x, y) offsets."""
        ws, hs = (width - crop_w) // 4, (height - crop_h) // 4
        grid = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3)]
        return [(a * ws, b * hs) for a, b in grid]

    def forward(self, img: Any) -> Any:
        width, height = v2.functional.get_size(img)[::-1]  # get_size -> [H, W]
        pairs = self.crop_pairs(width, height)
        crop_w, crop_h = pairs[_randint(len(pairs))]
        offs = self.offsets(width, height, crop_w, crop_h)
        x, y = offs[_randint(len(offs))]
        return v2.functional.resized_crop(
            img,
            y,
            x,
            crop_h,
            crop_w,
            [self.size, self.size],
            interpolation=v2.InterpolationMode.BILINEAR,
            antialias=True,
        )

    def extra_repr(self) -> str:
        return f"size={self.size}, scales={self.scales}, max_distort={self.max_distort}"


class Cutout(torch.nn.Module):
    """One square hole of side ``length`` at a uniform centre, clipped to the image, filled with one random colour.

    As official (``SLCutoutPIL``): the box is ``[c - length/2, c + length/2]`` drawn with PIL's inclusive rectangle,
    and the fill colour is uniform in {0..255}³. Works on PIL images and on ``[..., 3, H, W]`` tensors
    (uint8 or float in [0, 1]).
    """

    def __init__(self, length: int, n_holes: int = 1):
        super().__init__()
        self.length = length
        self.n_holes = n_holes

    def forward(self, img: Any) -> Any:
        h, w = v2.functional.get_size(img)
        if isinstance(img, Image.Image):
            img = img.copy()
            draw = ImageDraw.Draw(img)
        for _ in range(self.n_holes):
            yc, xc = _randint(h), _randint(w)
            y0, y1 = max(0, yc - self.length // 2), min(h, yc + self.length // 2)
            x0, x1 = max(0, xc - self.length // 2), min(w, xc + self.length // 2)
            fill = tuple(int(v) for v in torch.randint(256, (3,)).tolist())
            if isinstance(img, Image.Image):
                draw.rectangle([x0, y0, x1, y1], fill=fill)
            else:
                value = torch.tensor(fill, dtype=torch.float32)
                if img.is_floating_point():
                    value = value / 255.0
                img = img.clone()
                img[..., :, y0 : y1 + 1, x0 : x1 + 1] = value.to(img.dtype).view(3, 1, 1)
        return img

    def extra_repr(self) -> str:
        return f"length={self.length}, n_holes={self.n_holes}"


def _to_tensor(mean: Sequence[float], std: Sequence[float]) -> list[Any]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


class _Preset:
    """A transform in two parts: ``prepare`` (deterministic, PIL -> PIL: what ``data.cache_images`` keeps in RAM)
    and ``finish`` (everything after it: random augmentation, tensor, normalisation)."""

    prepare: Any
    finish: v2.Compose

    @property
    def transform(self) -> v2.Compose:
        """The whole pipeline, ``prepare`` then ``finish`` (read-only: set ``prepare`` / ``finish`` instead)."""
        return v2.Compose([self.prepare, *self.finish.transforms])

    def __call__(self, img: Any) -> torch.Tensor:
        """A PIL image (any size, RGB) -> its normalised float tensor ``[3, H, W]``."""
        return self.finish(self.prepare(img))


class TrainPreset(_Preset):
    """Training transform: PIL image -> normalised ``[3, img_size, img_size]`` float tensor.

    Args:
        img_size: Output side.
        preset: ``crop`` | ``cutout_randaug`` | ``flip`` | ``none`` (see the module docstring).
        mean: Normalisation mean (3 values).
        std: Normalisation std (3 values).
    """

    def __init__(
        self,
        *,
        img_size: int,
        preset: str = "crop",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if preset not in PRESETS:
            raise ValueError(f"unknown train preset {preset!r}; valid: {list(PRESETS)}")
        self.img_size, self.preset = img_size, preset
        s = img_size
        side = s + 64 if preset == "crop" else s
        random_ops: list[Any] = {
            "crop": [MultiScaleCrop(s), v2.RandomHorizontalFlip()],
            "cutout_randaug": [Cutout(s // 2), v2.RandAugment()],
            "flip": [v2.RandomHorizontalFlip()],
        }.get(preset, [])
        self.prepare = v2.Resize((side, side), antialias=True)
        self.finish = v2.Compose(random_ops + _to_tensor(mean, std))

    def __repr__(self) -> str:
        return f"TrainPreset(preset={self.preset!r}, {self.transform!r})"


class EvalPreset(_Preset):
    """Evaluation transform: ``Resize((h, w))`` (bilinear) -> tensor -> normalise, as official.

    Args:
        img_size: Output side, or ``(h, w)`` for a non-square input (an ONNX export's own size).
        mean: Normalisation mean (kept as ``self.mean``: display and artefacts de-normalise with it).
        std: Normalisation std (``self.std``).
    """

    def __init__(
        self,
        *,
        img_size: int | tuple[int, int],
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        h, w = (img_size, img_size) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))
        self.img_size = img_size
        self.size: tuple[int, int] = (h, w)
        self.mean: tuple[float, ...] = tuple(float(m) for m in mean)
        self.std: tuple[float, ...] = tuple(float(s) for s in std)
        self.prepare = v2.Resize((h, w), antialias=True)
        self.finish = v2.Compose(_to_tensor(self.mean, self.std))

    def __repr__(self) -> str:
        return f"EvalPreset({self.transform!r})"


def build_eval_transform(config: Any, *, img_size: int | tuple[int, int] | None = None) -> EvalPreset:
    """The one evaluation transform of a run: ``EvalPreset`` at the model's size with the run's normalisation.

    Args:
        config: The run's :class:`sadcl.config.Config` (``model.img_size``, ``model.backbone``, ``data.normalization``).
        img_size: Another size (e.g. an ONNX export's ``(h, w)``); default ``model.img_size``.
    """
    mean, std = resolve_normalization(config.data.normalization, config.model.backbone)
    return EvalPreset(img_size=config.model.img_size if img_size is None else img_size, mean=mean, std=std)


def resolve_normalization(
    mode: str = "imagenet", backbone_name: str | None = None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) for ``"imagenet"`` (the official values) or ``"backbone"`` (timm's pretrained config).

    A backbone without a pretrained config (or without mean/std in it) falls back to ImageNet, with a warning.
    """
    if mode == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    if mode != "backbone":
        raise ValueError(f"unknown normalization {mode!r}; valid: ['imagenet', 'backbone']")
    if not backbone_name:
        raise ValueError("normalization='backbone' needs the backbone name")
    import timm

    cfg = timm.get_pretrained_cfg(backbone_name)
    if cfg is None or not getattr(cfg, "mean", None) or not getattr(cfg, "std", None):
        _logger.warning("timm has no normalisation for %r; using ImageNet mean/std", backbone_name)
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(float(x) for x in cfg.mean), tuple(float(x) for x in cfg.std)


def build_transforms(data_cfg: Any, *, img_size: int, backbone: str | None = None) -> tuple[TrainPreset, EvalPreset]:
    """``DataConfig`` (+ model image size / backbone) -> (train transform, eval transform)."""
    mean, std = resolve_normalization(data_cfg.normalization, backbone)
    return (
        TrainPreset(img_size=img_size, preset=data_cfg.train_preset, mean=mean, std=std),
        EvalPreset(img_size=img_size, mean=mean, std=std),
    )
