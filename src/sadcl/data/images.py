"""Safe image loading: any PIL mode to 8-bit RGB, and errors that name the file and what was expected.

One rule for every entry point (training, ``predict``, ``serve``, ``visualize``): :func:`decode_rgb`, which first
applies the EXIF orientation (a phone photo stored sideways with ``Orientation=6`` is turned upright), then converts
the mode. Conversions (PIL's plain ``convert("RGB")`` gets several of these wrong):

- 16-bit greyscale (``I;16*``, and ``I`` as PIL opens 16-bit PNGs) is scaled by 255/65535, not clipped at 255;
- 32-bit float (``F``) is taken as [0, 1] when its maximum is <= 1, else as [0, 255];
- images with transparency (``RGBA``, ``LA``, ``PA``, ``P`` with a transparent index) are composited over white;
- ``CMYK``, ``YCbCr``, ``L``, ``1``, ``P`` go through PIL's own conversion.

A truncated file is an error: PIL's ``LOAD_TRUNCATED_IMAGES`` is never set, so a half-written JPEG cannot turn into
a grey-padded training image.

Very large images: Pillow's decompression-bomb guard applies with the limit ``data.max_image_pixels`` (default
Pillow's own, 89 478 485 pixels; :func:`set_max_image_pixels`). An image above the limit is decoded with one log
warning per file (instead of Pillow's ``DecompressionBombWarning`` printed raw at every read); one above twice the
limit is an error naming the file and the setting; ``None`` turns the guard off (trusted data with large scans).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

_logger = logging.getLogger(__name__)

PILLOW_MAX_IMAGE_PIXELS: int | None = Image.MAX_IMAGE_PIXELS
"""Pillow's decompression-bomb limit as this process found it (the default of ``data.max_image_pixels``)."""

_large_logged: set[str] = set()
_large_lock = threading.Lock()

VECTOR_SUFFIXES = (".svg", ".svgz", ".pdf", ".eps", ".ai", ".emf", ".wmf")
"""Vector and document formats: not raster images (sadcl reads pixels)."""


def set_max_image_pixels(limit: int | None) -> None:
    """Set the decompression-bomb limit (``data.max_image_pixels``) for this process: warn above it, refuse above
    twice it; None: no limit."""
    if limit is not None and limit < 1:
        raise ValueError(f"data.max_image_pixels must be >= 1 or null, got {limit}")
    Image.MAX_IMAGE_PIXELS = limit


def _log_large(path: Path, img: Image.Image) -> None:
    """One warning per file and process for an image above the limit (Pillow would warn at every read)."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None or img.width * img.height <= limit:
        return
    with _large_lock:
        if str(path) in _large_logged:
            return
        _large_logged.add(str(path))
    _logger.warning(
        "%s: a very large image (%dx%d, %.0f megapixels, over data.max_image_pixels=%d); decoding it anyway "
        "(twice the limit would stop)",
        path,
        img.width,
        img.height,
        img.width * img.height / 1e6,
        limit,
    )


class DataError(ValueError):
    """A dataset file (image, label list, manifest) is missing or malformed; the message names file and place."""


class ImageLoadError(DataError):
    """An image file is missing, unreadable, truncated or not an image."""


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file fully and return it as 8-bit RGB.

    Args:
        path: Image file.

    Returns:
        A loaded ``PIL.Image`` in mode ``RGB`` (the file is closed).

    Raises:
        ImageLoadError: Naming the file, when it is missing, not an image, truncated or otherwise undecodable.
    """
    path = Path(path)
    try:
        # The guard's warning becomes one log line per file (_log_large); its error stays an error.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                _log_large(path, img)
                img.load()  # decode now, inside the try: a truncated file fails here, not later in a worker
                return decode_rgb(img)
    except FileNotFoundError:
        raise ImageLoadError(f"{path}: image file not found (expected an existing image file)") from None
    except UnidentifiedImageError:
        if path.suffix.lower() in VECTOR_SUFFIXES:
            raise ImageLoadError(
                f"{path}: a {path.suffix[1:].upper()} file is a vector or document format, not a raster image; "
                "convert it to PNG or JPEG"
            ) from None
        raise ImageLoadError(f"{path}: not a recognised image file (expected JPEG/PNG/...)") from None
    except Image.DecompressionBombError as e:
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(found.group(1)) / 1e6:.0f} megapixels" if found else "too many pixels"
        raise ImageLoadError(
            f"{path}: the image has {size}, more than twice data.max_image_pixels={Image.MAX_IMAGE_PIXELS} "
            "(Pillow's decompression-bomb guard); for trusted large scans raise data.max_image_pixels (null: no "
            "limit)"
        ) from None
    except (OSError, SyntaxError, ValueError) as e:
        # PIL reports truncation as OSError("image file is truncated ...") and some corrupt headers as SyntaxError.
        raise ImageLoadError(f"{path}: cannot decode image ({e}); expected a complete, valid image file") from None


def decode_rgb(img: Image.Image) -> Image.Image:
    """The one image rule: EXIF orientation applied, then :func:`to_rgb`. Returns an 8-bit RGB image."""
    return to_rgb(ImageOps.exif_transpose(img))


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a PIL image of any mode to 8-bit RGB (see the module docstring for the rules)."""
    mode = img.mode
    if mode == "RGB":
        return img.copy() if img.readonly else img
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        # 16-bit data (PNG I;16, or I from older PIL): scale the full 0..65535 range down instead of clipping at 255.
        arr = np.clip(arr, 0, 65535) * (255.0 / 65535.0)
        return Image.fromarray(np.rint(arr).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0
        arr = np.nan_to_num(np.clip(arr * scale, 0, 255))
        return Image.fromarray(np.rint(arr).astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def check_image(path: str | os.PathLike) -> str | None:
    """Try to decode an image; return None when it is fine, else the error message (naming the file)."""
    try:
        load_image(path)
    except ImageLoadError as e:
        return str(e)
    return None
