"""Prediction inputs: expand files, directories and globs into image paths, and load them in batches.

Directories are searched recursively for image extensions; a pattern with ``*``, ``?`` or ``[`` is a glob. Unreadable
images are reported per file (the batch goes on), so ``predict --skip-bad`` can leave them out.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from sadcl.data.images import ImageLoadError, decode_rgb, load_image

__all__ = ["IMAGE_EXTENSIONS", "ImageInput", "ImageList", "collate_images", "expand_inputs", "image_name"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_GLOB_CHARS = ("*", "?", "[")

ImageInput = str | os.PathLike | Image.Image


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Turn files, directories and glob patterns into a sorted list of image paths (each once).

    A file named explicitly is kept whatever its extension; files found in a directory (recursively) or by a glob
    pattern (``**`` recurses) are kept when their extension is in :data:`IMAGE_EXTENSIONS` (any case). Hidden
    files and directories (``.name``) inside a searched directory are skipped.

    Raises:
        FileNotFoundError: An input matches no image; the message names that input.
    """
    if not inputs:
        raise ValueError("no inputs given: pass image files, directories or glob patterns")
    found: set[str] = set()
    for raw in inputs:
        item = str(raw)
        if os.path.isfile(item):
            matches = [item]
        elif os.path.isdir(item):
            matches = _images_under(item)
        elif any(ch in item for ch in _GLOB_CHARS):
            matches = []
            for m in glob.glob(item, recursive=True):
                if os.path.isdir(m):
                    matches.extend(_images_under(m))
                elif os.path.isfile(m) and _is_image_name(m):
                    matches.append(m)
        else:
            raise FileNotFoundError(f"{item}: no such file or directory")
        if not matches:
            raise FileNotFoundError(f"{item}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
        found.update(matches)
    return sorted(found)


def _is_image_name(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def _images_under(directory: str) -> list[str]:
    out = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # pruning in place stops os.walk descending
        out.extend(os.path.join(root, f) for f in files if not f.startswith(".") and _is_image_name(f))
    return out


def image_name(item: ImageInput, index: int) -> str:
    if isinstance(item, Image.Image):
        return getattr(item, "filename", "") or f"<image {index}>"
    return str(item)


class ImageList(Dataset):
    """``ds[i] -> (i, image [3, H, W] or None, error message or None)``: a bad file is reported, not raised, so the
    main process decides (raise or skip) and the error is not wrapped by a loader worker."""

    def __init__(self, items: Sequence[ImageInput], transform: Callable[[Image.Image], Tensor]) -> None:
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[int, Tensor | None, str | None]:
        item = self.items[index]
        try:
            image = decode_rgb(item) if isinstance(item, Image.Image) else load_image(item)
        except ImageLoadError as e:
            return index, None, str(e)
        return index, self.transform(image), None


def collate_images(batch: list[tuple[int, Tensor | None, str | None]]) -> tuple[list[int], Tensor | None, list[str]]:
    """(indices of the readable images, their stacked images [b, 3, H, W] or None, error messages of the others).

    Stacking here runs in the loader worker, and a stacked batch is what ``pin_memory`` can pin.
    """
    good = [(i, t) for i, t, e in batch if e is None]
    return [i for i, _ in good], torch.stack([t for _, t in good]) if good else None, [e for *_, e in batch if e]
