"""A one-page demo server: upload an image (or pick a MOM-30 example), see label scores and per-label attention.

Uploads are the raw image bytes as the request body (``POST /api/predict``; the page sends the chosen file that way,
``curl --data-binary @photo.jpg`` works too). They are read into memory with a size cap, decoded with Pillow and never
written to disk. Errors are JSON ``{"detail": message}`` with a 4xx status; the page shows the message.

Endpoints:
    ``GET /``                          the page
    ``GET /api/info``                  classes, example ids, upload limit
    ``GET /api/examples/{i}.png``      an example image
    ``POST /api/predict``              body = image bytes -> prediction
    ``POST /api/examples/{i}/predict`` prediction for an example
    ``/api/v1/...``                    the JSON API for programs (:mod:`sadcl.inference.serve_api`);
                                       OpenAPI page /api/docs
"""

from __future__ import annotations

import base64
import io
import logging
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool

from sadcl.data.images import decode_rgb

logger = logging.getLogger(__name__)

__all__ = ["ExampleSet", "create_app", "create_app_from_model", "create_app_from_predictor"]

DEFAULT_MAX_UPLOAD_BYTES = 10 * 2**20
# Decoded size cap: a small PNG can expand to gigabytes of pixels (a "decompression bomb").
DEFAULT_MAX_PIXELS = 40_000_000
ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
_NUM_SCORES_SHOWN = 10


class ExampleSet:
    """Example images for the picker, loaded lazily by index.

    Args:
        loaders: One callable per example returning the image.
        names: A caption per example (e.g. its true labels).
    """

    def __init__(self, loaders: Sequence[Callable[[], Image.Image]], names: Sequence[str]) -> None:
        if len(loaders) != len(names):
            raise ValueError("one name per example loader is required")
        self.loaders = list(loaders)
        self.names = list(names)

    def __len__(self) -> int:
        return len(self.loaders)

    def image(self, index: int) -> Image.Image:
        return decode_rgb(self.loaders[index]())

    @classmethod
    def from_dataset(cls, dataset: Any, *, limit: int = 24) -> ExampleSet:
        """The first ``limit`` images of a dataset with ``paths`` and ``class_names`` (e.g. the MOM-30 test split)."""
        paths = list(dataset.paths)[:limit]
        targets = getattr(dataset, "targets", None)
        names = []
        for i, p in enumerate(paths):
            if targets is not None:
                true = [dataset.class_names[c] for c in np.flatnonzero(np.asarray(targets[i]) > 0.5)]
                names.append(", ".join(true) or Path(p).name)
            else:
                names.append(Path(p).name)

        def loader(path: str) -> Callable[[], Image.Image]:
            return lambda: Image.open(path)

        return cls([loader(p) for p in paths], names)


def _data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode uploaded bytes into an RGB image, or raise ``ValueError`` with a message for the user.

    Args:
        data: The file's bytes.
        max_pixels: Largest accepted width x height.

    Returns:
        The decoded RGB image (fully loaded; no file handle kept).
    """
    if not data:
        raise ValueError("the upload is empty: choose an image file")
    try:
        with warnings.catch_warnings():  # the pixel cap below answers 413; Pillow's warning would only add noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
        fmt = img.format
        if fmt not in ALLOWED_FORMATS:
            raise ValueError(f"unsupported image format {fmt}: use one of {', '.join(ALLOWED_FORMATS)}")
        if img.width * img.height > max_pixels:
            raise OverflowError(f"image is {img.width}x{img.height} pixels; the limit is {max_pixels:,} pixels")
        img.load()
        return decode_rgb(img)  # the loader's rule: EXIF orientation, alpha over white, 16-bit scaled
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as e:
        if isinstance(e, Image.DecompressionBombError):
            raise OverflowError(f"image has too many pixels: {e}") from e
        raise ValueError(
            "the file is not an image that can be read (PNG, JPEG, GIF, BMP, WEBP or TIFF expected)"
        ) from e


def create_app_from_model(
    model: Any,
    class_names: Sequence[str],
    transform: Callable[[Image.Image], Any],
    *,
    threshold: float | np.ndarray = 0.5,
    **kwargs: Any,
) -> FastAPI:
    """The FastAPI app around an in-memory torch model (run where its parameters are).

    Args:
        model: A model with ``forward(images, return_attn=True)``
            (see :func:`sadcl.inference.attention.label_attention`).
        class_names: The C class names.
        transform: Evaluation transform, PIL image -> ``[3, H, W]``.
        threshold: Probability threshold (scalar or per class [C]) for predicted labels.
        kwargs: See :func:`create_app_from_predictor`.
    """
    from sadcl.inference.predict import Predictor

    device = next(model.parameters()).device
    predictor = Predictor(model, class_names=class_names, transform=transform, thresholds=threshold, device=device)
    return create_app_from_predictor(predictor, **kwargs)


def create_app_from_predictor(
    predictor: Any,
    *,
    examples: ExampleSet | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_labels: int = 8,
    title: str = "sadcl",
    api_max_images: int = 16,
    api_max_concurrent: int = 4,
) -> FastAPI:
    """The FastAPI app around a torch-engine :class:`sadcl.inference.predict.Predictor`.

    The page and the JSON API run the predictor's forward (:meth:`~sadcl.inference.predict.Predictor.outputs`), its
    transform and its thresholds, so their probabilities are ``sadcl predict``'s.

    Args:
        predictor: The predictor (its model must return ``attn`` with ``return_attn=True``).
        examples: Example images for the picker; None hides the picker.
        max_upload_bytes: Largest accepted upload.
        max_pixels: Largest accepted decoded image (width x height).
        max_labels: At most this many predicted labels get an attention overlay.
        title: Shown in the page header.
        api_max_images: Most images per ``/api/v1/predict`` request (its body may be that many uploads).
        api_max_concurrent: Most ``/api/v1/predict`` requests admitted at once (others get 503).

    Returns:
        A ``fastapi.FastAPI`` application.
    """
    from sadcl.inference.attention import label_attention
    from sadcl.inference.postprocess import predicted_mask
    from sadcl.inference.serve_api import add_api, predictor_probabilities, read_body

    class_names, threshold = predictor.class_names, predictor.thresholds
    lock = threading.Lock()  # one forward at a time: parallel CPU forwards only fight over the same cores
    page = resources.files("sadcl.inference").joinpath("serve_static/index.html").read_text(encoding="utf-8")
    app = FastAPI(title=f"{title} demo", docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json")

    def predict(image: Image.Image) -> dict[str, Any]:
        start = time.perf_counter()
        with lock:
            result = label_attention(
                predictor,
                image,
                class_names=class_names,
                transform=predictor.transform,
                threshold=threshold,
                top_k=max_labels,
                display_size=224,
            )
        predicted = predicted_mask(result.scores, threshold)  # the one rule; the fill-up label is shown, not predicted
        order = np.argsort(-result.scores, kind="stable")[:_NUM_SCORES_SHOWN]
        return {
            "image": _data_url(result.image),
            "labels": [
                {
                    "name": la.name,
                    "score": la.score,
                    "predicted": bool(predicted[la.index]),
                    "attention": _data_url(la.overlay),
                }
                for la in result.labels
            ],
            "scores": [
                {"name": class_names[c], "score": float(result.scores[c]), "predicted": bool(predicted[c])}
                for c in order
            ],
            "elapsed_ms": round(1000 * (time.perf_counter() - start), 1),
        }

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {
            "title": title,
            "classes": list(class_names),
            "examples": [{"id": i, "name": n} for i, n in enumerate(examples.names)] if examples else [],
            "max_upload_bytes": max_upload_bytes,
        }

    def _example(index: int) -> Image.Image:
        if examples is None or not 0 <= index < len(examples):
            raise HTTPException(status_code=404, detail=f"no example {index}")
        return examples.image(index)

    @app.get("/api/examples/{index}.png")
    def example_image(index: int) -> Response:
        buf = io.BytesIO()
        _example(index).save(buf, format="PNG")
        return Response(buf.getvalue(), media_type="image/png")

    @app.post("/api/examples/{index}/predict")
    async def example_predict(index: int) -> dict[str, Any]:
        image = _example(index)
        return await run_in_threadpool(predict, image)

    @app.post("/api/predict")
    async def upload_predict(request: Request) -> dict[str, Any]:
        body = await read_body(request, max_upload_bytes, _too_big)  # 413 first, as for any oversize request
        if request.headers.get("content-type", "").startswith("multipart/"):
            raise HTTPException(
                status_code=415,
                detail="send the image bytes as the request body, not a form (e.g. curl --data-binary @photo.jpg)",
            )
        try:
            image = decode_image(body, max_pixels=max_pixels)
        except OverflowError as e:
            raise HTTPException(status_code=413, detail=str(e)) from None
        except ValueError as e:
            raise HTTPException(status_code=415, detail=str(e)) from None
        return await run_in_threadpool(predict, image)

    add_api(
        app,
        predict_probs=predictor_probabilities(predictor, lock),
        decode=lambda data: decode_image(data, max_pixels=max_pixels),
        class_names=class_names,
        thresholds=threshold,
        model_name=title,
        max_request_bytes=api_max_images * max_upload_bytes,
        max_images=api_max_images,
        max_image_bytes=max_upload_bytes,
        max_concurrent=api_max_concurrent,
    )
    return app


def _too_big(size: int, limit: int, at_least: bool = False) -> str:
    return (
        f"the file is too large ({'over ' if at_least else ''}{size / 2**20:.1f} MB); "
        f"the limit is {limit / 2**20:.1f} MB"
    )


def _mom30_examples(config: Any, limit: int) -> ExampleSet | None:
    """MOM-30 test images if the dataset is already on disk (the server never generates it)."""
    if getattr(config.data, "format", None) != "mom30":
        return None
    try:
        from sadcl.data import mom30

        if not mom30.is_generated(config.data):
            return None
        from sadcl.data import build_dataset

        dataset = build_dataset(config.data, config.data.test_split, None)
    except Exception as e:  # any failure just hides the picker; the upload path still works
        logger.info("no MOM-30 examples for the picker: %s", e)
        return None
    return ExampleSet.from_dataset(dataset, limit=limit)


def create_app(
    checkpoint: str | Path,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    thresholds: str | Path | None = None,
    examples: bool = True,
    num_examples: int = 24,
    device: str = "cpu",
) -> FastAPI:
    """The demo app for a checkpoint.

    Args:
        checkpoint: A checkpoint from training or a model directory (see :func:`sadcl.inference.open.open_model`).
        max_upload_bytes: Largest accepted upload.
        thresholds: Optional per-class thresholds file (``sadcl tune-thresholds``); default: a model directory's
            own, else 0.5 for every class.
        examples: Offer MOM-30 test images in a picker when the checkpoint was trained on MOM-30 and the data exists.
        num_examples: How many examples to offer.
        device: Where the model runs (``cpu``, ``cuda``, ``cuda:1`` or ``auto``).

    Returns:
        A ``fastapi.FastAPI`` application.
    """
    from sadcl.inference.open import open_model
    from sadcl.inference.predict import Predictor

    trained = open_model(checkpoint, thresholds=thresholds, device=device)
    trained.torch_model("sadcl serve")
    predictor = Predictor.from_trained(trained, device=device)
    example_set = _mom30_examples(trained.config, num_examples) if examples else None
    return create_app_from_predictor(
        predictor,
        examples=example_set,
        max_upload_bytes=max_upload_bytes,
        title=Path(checkpoint).name,
    )
