"""The JSON API (/api/v1): several images, the limits (size, count, non-images), a bounded burst, OpenAPI."""

from __future__ import annotations

import io
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")

import httpx  # noqa: E402
import uvicorn  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from sadcl.inference.postprocess import RULE  # noqa: E402
from sadcl.inference.serve import decode_image  # noqa: E402
from sadcl.inference.serve_api import add_api  # noqa: E402

NAMES = ["red", "green", "blue"]
THRESHOLDS = [0.5, 0.3, 0.7]


def _png(color: tuple[int, int, int], size: tuple[int, int] = (16, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


class _Channels:
    """A stand-in model: the probability of class c is the image's mean of channel c / 255; counts overlapping calls."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay, self.active, self.peak, self.calls = delay, 0, 0, 0
        self.lock = threading.Lock()

    def __call__(self, images: list[Image.Image]) -> np.ndarray:
        with self.lock:
            self.active += 1
            self.calls += 1
            self.peak = max(self.peak, self.active)
        time.sleep(self.delay)
        with self.lock:
            self.active -= 1
        return np.stack([np.asarray(im, np.float32).mean(axis=(0, 1)) / 255.0 for im in images])


def _app(model: _Channels, **limits) -> FastAPI:
    app = FastAPI(docs_url="/api/docs", openapi_url="/api/openapi.json")
    add_api(
        app,
        predict_probs=model,
        decode=lambda data: decode_image(data, max_pixels=10_000),
        class_names=NAMES,
        thresholds=THRESHOLDS,
        model_name="tiny",
        **{"max_request_bytes": 20_000, "max_images": 4, "max_concurrent": 2, **limits},
    )
    return app


@pytest.fixture
def client() -> TestClient:
    return TestClient(_app(_Channels()))


def _files(*items: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (name, data, "application/octet-stream")) for name, data in items]


def test_several_images_labels_scores_thresholds(client) -> None:
    res = client.post("/api/v1/predict", files=_files(("r.png", _png((255, 0, 0))), ("c.png", _png((0, 200, 230)))))
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["rule"] == RULE and body["activation"] == "sigmoid"
    assert body["thresholds"] == dict(zip(NAMES, THRESHOLDS))
    red, cyan = body["results"]
    assert red["filename"] == "r.png" and [lab["label"] for lab in red["labels"]] == ["red"]
    # green 200/255 = 0.78 > 0.3 and blue 230/255 = 0.90 > 0.7: both, best first, each with its threshold.
    assert [(lab["label"], lab["threshold"]) for lab in cyan["labels"]] == [("blue", 0.7), ("green", 0.3)]
    assert cyan["scores"]["green"] == pytest.approx(200 / 255, abs=1e-6)
    top1 = client.post("/api/v1/predict?top_k=1&all_scores=false", files=_files(("c.png", _png((0, 200, 230)))))
    item = top1.json()["results"][0]
    assert [lab["label"] for lab in item["labels"]] == ["blue"] and "scores" not in item


def test_info_and_openapi(client) -> None:
    info = client.get("/api/v1/info").json()
    assert info["classes"] == NAMES and info["limits"] == {
        "max_request_bytes": 20_000,
        "max_images": 4,
        "max_concurrent": 2,
        "max_image_bytes": None,
    }
    spec = client.get("/api/openapi.json").json()
    op = spec["paths"]["/api/v1/predict"]["post"]
    assert "multipart/form-data" in op["requestBody"]["content"]
    assert {"413", "415", "503"} <= set(op["responses"])
    assert client.get("/api/docs").status_code == 200


def test_limits_and_bad_input(client) -> None:
    big = np.random.default_rng(0).integers(0, 256, (90, 90, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, format="PNG")  # ~24 kB of noise: over the 20 kB request limit
    res = client.post("/api/v1/predict", files=_files(("big.png", buf.getvalue())))
    assert res.status_code == 413 and "limit is 20,000 bytes" in res.json()["detail"]
    five = _files(*[(f"{i}.png", _png((i, i, i))) for i in range(5)])
    res = client.post("/api/v1/predict", files=five)
    assert res.status_code == 413 and res.json()["detail"] == "5 images; the limit is 4 per request"
    res = client.post("/api/v1/predict", files=_files(("ok.png", _png((1, 2, 3))), ("notes.txt", b"hello")))
    assert res.status_code == 415 and res.json()["detail"].startswith("notes.txt: the file is not an image")
    res = client.post("/api/v1/predict", files=_files(("wide.png", _png((1, 2, 3), size=(200, 100)))))
    assert res.status_code == 413 and "wide.png" in res.json()["detail"]
    assert client.post("/api/v1/predict", content=_png((1, 2, 3))).status_code == 415  # raw bytes, not a form
    assert client.post("/api/v1/predict", data={"images": "text"}).status_code == 415
    assert client.post("/api/v1/predict", files=[("other", ("a.png", _png((1, 1, 1)), "image/png"))]).status_code == 422
    assert client.post("/api/v1/predict?top_k=0", files=_files(("a.png", _png((1, 1, 1))))).status_code == 422


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_burst_of_50_parallel_requests_is_bounded() -> None:
    model = _Channels(delay=0.1)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(_app(model), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}/api/v1/predict"
    try:
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.05)
        assert server.started
        body = _files(("a.png", _png((255, 0, 0))), ("b.png", _png((0, 0, 255))))

        def post(_: int) -> int:
            with httpx.Client(timeout=30) as c:
                return c.post(url, files=body).status_code

        with ThreadPoolExecutor(max_workers=50) as pool:
            codes = list(pool.map(post, range(50)))
        assert set(codes) <= {200, 503}, codes
        assert codes.count(200) >= 1 and codes.count(503) >= 1, codes  # some admitted, the rest turned away
        assert model.peak <= 2  # never more than max_concurrent requests at the model
        assert model.calls == codes.count(200)
        with httpx.Client(timeout=30) as c:  # the server is still up and answers normally
            res = c.post(url, files=body)
            assert res.status_code == 200 and len(res.json()["results"]) == 2
    finally:
        server.should_exit = True
        thread.join(timeout=10)
