"""The JSON API beside the demo page: ``POST /api/v1/predict`` (several images per request) and ``GET /api/v1/info``.

A request is ``multipart/form-data`` with one ``images`` file field per image (``curl -F images=@a.jpg -F
images=@b.png``). The answer gives, per image, the predicted labels (best first) with their score and the threshold
used, and every class's probability; labels follow :mod:`sadcl.inference.postprocess` (sigmoid, per-class thresholds,
top-k).

Limits, each answered with a JSON ``{"detail": message}``:

- the request body is read with a running byte count and refused past ``max_request_bytes`` (413), so a missing or
  false Content-Length cannot make the server buffer more;
- at most ``max_images`` images per request (413), each within ``max_image_bytes`` (413 naming the file, checked for
  every image before any is decoded, so a size error comes before a type error), then each decoded with the page's
  checks (pixel cap 413, not an image 415, naming the file);
- at most ``max_concurrent`` requests are admitted at once, counted *before* the body is read; one more gets 503
  with ``Retry-After`` instead of waiting in memory. Admitted requests run their forward one at a time (the model
  lock), so memory is bounded by ``max_concurrent x max_request_bytes`` plus one batch.

The OpenAPI description is at ``/api/openapi.json`` and its page at ``/api/docs``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from PIL import Image
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from sadcl import __version__
from sadcl.inference.postprocess import RULE, as_thresholds, select

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_MAX_CONCURRENT", "DEFAULT_MAX_IMAGES", "add_api", "predictor_probabilities"]

DEFAULT_MAX_IMAGES = 16
DEFAULT_MAX_CONCURRENT = 4
_FIELD = "images"
_MAX_PARTS = 100_000


class LabelOut(BaseModel):
    label: str
    score: float
    threshold: float


class ImageOut(BaseModel):
    filename: str
    labels: list[LabelOut]
    scores: dict[str, float] | None = None


class PredictOut(BaseModel):
    model: str
    sadcl_version: str
    activation: str
    rule: str
    thresholds: dict[str, float]
    results: list[ImageOut]
    elapsed_ms: float


_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {_FIELD: {"type": "array", "items": {"type": "string", "format": "binary"}}},
                "required": [_FIELD],
            }
        }
    },
}


def predictor_probabilities(predictor: Any, lock: threading.Lock) -> Callable[[list[Image.Image]], np.ndarray]:
    """A batch function ``images -> probabilities [N, C]`` around a :class:`sadcl.inference.predict.Predictor`: its
    transform and forward, so the API's probabilities are ``sadcl predict``'s (one forward at a time)."""
    import torch

    def run(images: list[Image.Image]) -> np.ndarray:
        x = torch.stack([predictor.transform(im) for im in images])  # [N, 3, H, W]
        with lock:
            return predictor.predict_tensor(x)

    return run


def add_api(
    app: FastAPI,
    *,
    predict_probs: Callable[[list[Image.Image]], np.ndarray],
    decode: Callable[[bytes], Image.Image],
    class_names: Sequence[str],
    thresholds: Any = None,
    model_name: str = "sadcl",
    max_request_bytes: int,
    max_images: int = DEFAULT_MAX_IMAGES,
    max_concurrent: int = DEFAULT_MAX_CONCURRENT,
    max_image_bytes: int | None = None,
) -> None:
    """Add the ``/api/v1`` routes to ``app``.

    Args:
        app: The application (the demo page's).
        predict_probs: Decoded RGB images -> probabilities [N, C] (e.g. :func:`predictor_probabilities`).
        decode: Uploaded bytes -> RGB image; raises ``ValueError`` (not an image) or ``OverflowError`` (too large).
        class_names: The C class names.
        thresholds: [C], one value or None (0.5).
        model_name: Reported as ``model``.
        max_request_bytes: Largest accepted request body.
        max_images: Most images per request.
        max_concurrent: Most requests admitted at once (others get 503).
        max_image_bytes: Largest accepted image file (the page's upload limit); None: only the request cap applies.
    """
    if max_images < 1 or max_concurrent < 1 or max_request_bytes < 1:
        raise ValueError("max_images, max_concurrent and max_request_bytes must be >= 1")
    if max_image_bytes is not None and max_image_bytes < 1:
        raise ValueError("max_image_bytes must be >= 1 (or None)")
    names = list(class_names)
    thr = as_thresholds(thresholds, len(names))
    thr_map = {n: float(t) for n, t in zip(names, thr)}
    # Requests are admitted on the event loop thread only, so a plain counter needs no lock.
    state = {"active": 0}

    def results(files: list[tuple[str, Image.Image]], top_k: int | None, all_scores: bool) -> list[dict[str, Any]]:
        probs = predict_probs([im for _, im in files])
        out = []
        for (filename, _), p in zip(files, probs):
            chosen = select(p, thr, top_k=top_k)
            item: dict[str, Any] = {
                "filename": filename,
                "labels": [{"label": names[c], "score": float(p[c]), "threshold": float(thr[c])} for c in chosen],
            }
            if all_scores:
                item["scores"] = {n: float(s) for n, s in zip(names, p)}
            out.append(item)
        return out

    @app.get("/api/v1/info", tags=["api"])
    def info() -> dict[str, Any]:
        """The model's classes, thresholds, label rule and this server's limits."""
        return {
            "model": model_name,
            "sadcl_version": __version__,
            "classes": names,
            "thresholds": thr_map,
            "activation": "sigmoid",
            "rule": RULE,
            "limits": {
                "max_request_bytes": max_request_bytes,
                "max_images": max_images,
                "max_concurrent": max_concurrent,
                "max_image_bytes": max_image_bytes,
            },
        }

    @app.post(
        "/api/v1/predict",
        tags=["api"],
        response_model=PredictOut,
        response_model_exclude_none=True,
        openapi_extra={"requestBody": _REQUEST_BODY},
        responses={
            413: {
                "description": "request too large, too many images, an image file over the per-image limit, or an "
                "image with too many pixels"
            },
            415: {"description": "not multipart/form-data, or a part that is not a readable image"},
            503: {"description": "too many requests in progress; retry after the Retry-After seconds"},
        },
    )
    async def predict(request: Request, top_k: int | None = None, all_scores: bool = True) -> dict[str, Any]:
        """Labels for one or more images: multipart/form-data with one `images` file field per image."""
        if top_k is not None and top_k < 1:
            raise HTTPException(status_code=422, detail=f"top_k must be >= 1, got {top_k}")
        if state["active"] >= max_concurrent:
            raise HTTPException(
                status_code=503,
                detail=f"busy: {max_concurrent} requests in progress; retry shortly",
                headers={"Retry-After": "1"},
            )
        state["active"] += 1
        try:
            start = time.perf_counter()
            files = await _read_images(
                request,
                decode,
                max_request_bytes=max_request_bytes,
                max_images=max_images,
                max_image_bytes=max_image_bytes,
            )
            items = await run_in_threadpool(results, files, top_k, all_scores)
            return {
                "model": model_name,
                "sadcl_version": __version__,
                "activation": "sigmoid",
                "rule": RULE,
                "thresholds": thr_map,
                "results": items,
                "elapsed_ms": round(1000 * (time.perf_counter() - start), 1),
            }
        finally:
            state["active"] -= 1


async def read_body(request: Request, limit: int, too_big: Callable[[int, int, bool], str]) -> bytes:
    """The request body, refused with 413 (message ``too_big(size, limit, at_least)``) once it exceeds ``limit``.

    A declared Content-Length is checked first; the stream keeps a running total, so a missing or false
    Content-Length can never make the server buffer more than the cap.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(status_code=413, detail=too_big(int(declared), limit, False))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(status_code=413, detail=too_big(size, limit, True))
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_images(
    request: Request,
    decode: Callable[[bytes], Image.Image],
    *,
    max_request_bytes: int,
    max_images: int,
    max_image_bytes: int | None = None,
) -> list[tuple[str, Image.Image]]:
    """The request's ``images`` parts, decoded, after the size, count and type checks (HTTPException otherwise)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(
            status_code=415, detail=f"send multipart/form-data with one {_FIELD!r} file field per image"
        )
    body = await read_body(request, max_request_bytes, _too_big)

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    # Parse the capped body (not the socket): the form parser never sees more than max_request_bytes, which bounds
    # the parts too, so their count is checked below with a message rather than by the parser's own limit.
    form = await Request(request.scope, replay).form(max_files=_MAX_PARTS, max_fields=_MAX_PARTS)
    parts = form.getlist(_FIELD)
    uploads = [p for p in parts if hasattr(p, "read")]
    if len(uploads) != len(parts):
        raise HTTPException(status_code=415, detail=f"every {_FIELD!r} field must be a file, not a text value")
    if not uploads:
        raise HTTPException(status_code=422, detail=f"no images: add one {_FIELD!r} file field per image")
    if len(uploads) > max_images:
        raise HTTPException(status_code=413, detail=f"{len(uploads)} images; the limit is {max_images} per request")
    named = [(upload.filename or f"image {i}", await upload.read()) for i, upload in enumerate(uploads)]
    if max_image_bytes is not None:
        # Every size before any decoding: an oversized file is 413 whatever its bytes are.
        for name, data in named:
            if len(data) > max_image_bytes:
                raise HTTPException(
                    status_code=413,
                    detail=f"{name}: the image file is too large ({len(data) / 2**20:.1f} MB); the limit is "
                    f"{max_image_bytes / 2**20:.1f} MB per image",
                )
    out = []
    for name, data in named:
        try:
            out.append((name, decode(data)))
        except OverflowError as e:
            raise HTTPException(status_code=413, detail=f"{name}: {e}") from None
        except ValueError as e:
            raise HTTPException(status_code=415, detail=f"{name}: {e}") from None
    return out


def _too_big(size: int, limit: int, at_least: bool = False) -> str:
    return f"the request is too large ({'over ' if at_least else ''}{size:,} bytes); the limit is {limit:,} bytes"
