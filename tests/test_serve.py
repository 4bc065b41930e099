"""The demo server: the API (predictions, examples, rejected uploads) and the page end to end in headless Chromium."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from sadcl.inference.serve import ExampleSet, create_app_from_model, decode_image  # noqa: E402
from support.models import EvalTransform, tiny_model  # noqa: E402

NAMES = ["cat", "dog", "digit_0", "bag", "zebra"]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _png(seed: int = 0, size: tuple[int, int] = (90, 70)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def app():
    examples = ExampleSet([lambda s=s: Image.open(io.BytesIO(_png(s))) for s in range(3)], ["a", "b", "c"])
    # Threshold 0 so the random model "predicts" every label and the page has overlays to show.
    return create_app_from_model(
        tiny_model(num_classes=len(NAMES)),
        NAMES,
        EvalTransform(),
        examples=examples,
        threshold=0.0,
        max_upload_bytes=200_000,
        max_pixels=1_000_000,
        max_labels=3,
    )


@pytest.fixture(scope="module")
def client(app) -> TestClient:
    return TestClient(app)


def test_page_and_info(client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and 'id="file"' in page.text
    info = client.get("/api/info").json()
    assert info["classes"] == NAMES and [e["id"] for e in info["examples"]] == [0, 1, 2]
    assert info["max_upload_bytes"] == 200_000


def test_predict_upload(client) -> None:
    res = client.post("/api/predict", content=_png(), headers={"content-type": "image/png"})
    assert res.status_code == 200, res.text
    data = res.json()
    assert data["image"].startswith("data:image/png;base64,")
    assert len(data["scores"]) == 5 and {s["name"] for s in data["scores"]} == set(NAMES)
    scores = [s["score"] for s in data["scores"]]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert len(data["labels"]) == 3  # max_labels
    for label in data["labels"]:
        assert label["predicted"] and label["attention"].startswith("data:image/png;base64,")
        png = Image.open(io.BytesIO(__import__("base64").b64decode(label["attention"].split(",", 1)[1])))
        assert png.size == (224, 224)


def test_examples(client) -> None:
    img = client.get("/api/examples/1.png")
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    assert client.post("/api/examples/2/predict").status_code == 200
    assert client.get("/api/examples/9.png").status_code == 404
    assert client.post("/api/examples/9/predict").status_code == 404


def test_rejects(client) -> None:
    pdf = b"%PDF-1.4 definitely not an image"
    res = client.post("/api/predict", content=pdf, headers={"content-type": "image/png"})
    assert res.status_code == 415 and "not an image" in res.json()["detail"]
    res = client.post("/api/predict", content=b"")
    assert res.status_code == 415 and "empty" in res.json()["detail"]
    res = client.post("/api/predict", content=b"\0" * 300_000)
    assert res.status_code == 413 and "too large" in res.json()["detail"]
    flat = io.BytesIO()
    Image.new("RGB", (1200, 1000), (40, 90, 160)).save(flat, format="PNG")  # a small file with too many pixels
    assert len(flat.getvalue()) < 200_000
    res = client.post("/api/predict", content=flat.getvalue())
    assert res.status_code == 413 and "pixels" in res.json()["detail"]
    res = client.post("/api/predict", files={"file": ("x.png", _png(), "image/png")})
    assert res.status_code == 415 and "request body" in res.json()["detail"]


def test_oversized_without_content_length(client) -> None:
    def chunks() -> Iterator[bytes]:  # a streamed body has no Content-Length: the running total must catch it
        for _ in range(10):
            yield b"\0" * 50_000

    res = client.post("/api/predict", content=chunks())
    assert res.status_code == 413


def test_decode_image_formats() -> None:
    buf = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buf, format="JPEG")
    assert decode_image(buf.getvalue()).mode == "RGB"
    with pytest.raises(ValueError, match="format"):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buf, format="ICO")
        decode_image(buf.getvalue())


# ------------------------------------------------------------------------------------------ end to end, in a browser


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(app) -> Iterator[str]:
    import uvicorn

    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.mark.slow
def test_page_end_to_end_in_chromium(server, tmp_path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    # Installing a browser is the Makefile's job (`make test` depends on `make browser`), not a test's.
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run `make browser` (as root) to install Debian's chromium"
    image_file = tmp_path / "upload.png"
    image_file.write_bytes(_png(7, size=(120, 90)))
    not_image = tmp_path / "notes.txt"
    not_image.write_text("this is a text file, not an image\n")
    shot = tmp_path / "page.png"

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(server + "/")
            page.wait_for_selector("#examples button", timeout=15_000)  # examples were offered, so shown

            page.set_input_files("#file", str(image_file))
            page.wait_for_selector("#scores .score", timeout=30_000)
            labels = page.locator("#scores .score .name").all_text_contents()
            assert sorted(labels) == sorted(NAMES)
            assert page.locator("#overlays figure img").count() == 3
            assert page.locator("#error").is_hidden()
            page.screenshot(path=str(shot), full_page=True)

            page.set_input_files("#file", str(not_image))
            page.wait_for_selector("#error", state="visible", timeout=15_000)
            assert "not an image" in page.locator("#error").inner_text()

            page.locator("#examples button").first.click()  # the picker path clears the error and renders
            page.wait_for_selector("#error", state="hidden", timeout=15_000)
            assert page.locator("#overlays figure").count() == 3
        finally:
            browser.close()

    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.shape[0] >= 500 and pixels.shape[1] >= 1000
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500  # images and bars, not blank
