"""`headstart serve`: the API (TestClient), dynamic batching, limits and auth, a real uvicorn process on
127.0.0.1 (slow bodies, shutdown with requests in flight), schemathesis on the OpenAPI schema, and the
web page in a real headless Chromium driven by Playwright.
"""
from __future__ import annotations

import asyncio
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import TINY, make_images, write_folder

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _png(color=(200, 30, 30), size=(48, 40)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    from headstart import TransferClassifier

    root = tmp_path_factory.mktemp("serve")
    x, y = make_images(n_per_class=10)
    clf = TransferClassifier(TINY, strategy="linear-probe", pretrained=False, head_epochs=5, head_min_steps=30,
                             baselines=False, precision="fp32")
    clf.fit(str(write_folder(root / "train", x, y)), out=root / "run")
    return root / "run"


@pytest.fixture(scope="module")
def client(image_run):
    from fastapi.testclient import TestClient

    from headstart.serve import ServeConfig, build_app

    app, _ = build_app(image_run, ServeConfig(token=TOKEN, engine="torch", precision="fp32", max_inputs=4,
                                              max_body_mb=1))
    with TestClient(app) as c:
        yield c


def test_predict_images_matches_the_model(client, image_run, tmp_path):
    from headstart import load

    images = [_png((i * 60, 40, 255 - i * 60)) for i in range(3)]
    r = client.post("/predict?top=1", headers=AUTH,
                    files=[("files", (f"{i}.png", b, "image/png")) for i, b in enumerate(images)])
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["input"] for p in preds] == ["0.png", "1.png", "2.png"] and all(len(p["top"]) == 1 for p in preds)
    for i, b in enumerate(images):
        (tmp_path / f"{i}.png").write_bytes(b)
    expected = load(image_run).predict_proba([str(tmp_path / f"{i}.png") for i in range(3)])
    got = np.array([[p["probabilities"][c] for c in ("bright", "dark")] for p in preds])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_health_metadata_and_the_token(client):
    assert client.get("/health").json() == {"status": "ok", "model": "run", "modality": "image", "auth": True}
    assert client.get("/metadata").status_code == 401
    assert client.get("/metadata", headers={"Authorization": "Bearer wrong-token"}).status_code == 401
    r = client.post("/predict", files=[("files", ("a.png", _png(), "image/png"))])
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    meta = client.get("/metadata", headers=AUTH).json()
    assert meta["classes"] == ["bright", "dark"] and meta["backbone"] == TINY and meta["preprocess"]["input_size"] == 160
    assert meta["engine"].startswith("torch fp32") and meta["batching"]["max_batch"] == 16
    schema = client.get("/openapi.json").json()
    assert "/predict" in schema["paths"] and "HTTPBearer" in schema["components"]["securitySchemes"]


def test_bad_requests_get_clear_4xx(client):
    def post(files, **kw):
        return client.post("/predict", headers=AUTH, files=files, **kw)

    r = post([("files", ("notes.txt", b"hello there", "text/plain"))])
    assert r.status_code == 415 and "'notes.txt' is not an image" in r.json()["detail"]
    r = post([("files", ("cut.png", _png()[:70], "image/png"))])
    assert r.status_code == 422 and "'cut.png'" in r.json()["detail"]
    r = post([("files", (f"{i}.png", _png(), "image/png")) for i in range(5)])
    assert r.status_code == 422 and r.json()["detail"][0]["ctx"]["max_length"] == 4
    r = client.post("/predict", headers={**AUTH, "Content-Type": "application/octet-stream"}, content=b"x" * (2 << 20))
    assert r.status_code == 413 and "1 MB" in r.json()["detail"]
    r = client.post("/predict", headers=AUTH, json={"texts": ["an image run"]})
    assert r.status_code == 422


def test_decompression_bombs_are_refused(client):
    """A tiny PNG whose header claims 20,000 x 20,000 pixels: refused before a pixel is allocated."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b""))
    r = client.post("/predict", headers=AUTH, files=[("files", ("bomb.png", png, "image/png"))])
    assert r.status_code == 413 and "decompression bomb" in r.json()["detail"]


def test_non_loopback_needs_a_token(monkeypatch):
    from headstart.errors import HeadstartError
    from headstart.serve import ServeConfig

    monkeypatch.delenv("HEADSTART_TOKEN", raising=False)
    with pytest.raises(HeadstartError, match="--token"):
        ServeConfig(host="0.0.0.0")
    assert ServeConfig(host="0.0.0.0", token="long-enough-secret").token == "long-enough-secret"
    monkeypatch.setenv("HEADSTART_TOKEN", "from-the-environment")
    assert ServeConfig(host="0.0.0.0").token == "from-the-environment"
    assert "from-the-environment" not in str(ServeConfig(host="::1").to_dict())


def test_dynamic_batching_groups_concurrent_inputs_and_stop_answers_the_queue():
    from headstart.serve.batcher import DynamicBatcher

    sizes = []

    def predict(batch):
        sizes.append(len(batch))
        time.sleep(0.01)
        return np.array([[float(x), 1.0 - float(x)] for x in batch])

    async def main():
        b = DynamicBatcher(predict, max_batch=8, max_wait_ms=20)
        await b.start()
        outs = await asyncio.gather(*[b.submit([i / 100]) for i in range(40)])
        late = [asyncio.ensure_future(b.submit([0.5])) for _ in range(3)]
        await asyncio.sleep(0)
        await b.stop()  # graceful: what is queued still gets its answer
        return outs, await asyncio.gather(*late), b.stats

    outs, late, stats = asyncio.run(main())
    assert [round(float(o[0][0]), 2) for o in outs] == [i / 100 for i in range(40)]  # each its own answer
    assert max(sizes) <= 8 and stats.batches < 40 and stats.inputs == 43 and len(late) == 3


def test_texts_are_served(tmp_path):
    from fastapi.testclient import TestClient

    from headstart.serve import ServeConfig, build_app
    from headstart.text import TextClassifier

    rng = np.random.default_rng(0)
    words = ["good", "great", "bad", "awful", "film"]
    (tmp_path / "v.txt").write_text("\n".join(w + " " + " ".join(f"{v:.3f}" for v in rng.normal(0, 1, 4))
                                              for w in words) + "\n")
    texts, labels = ["good film", "great", "bad film", "awful"] * 5, ["p", "p", "n", "n"] * 5
    clf = TextClassifier(f"vectors:{tmp_path / 'v.txt'}", strategy="linear-probe", head_min_steps=20,
                         baselines=False, precision="fp32").fit(texts, labels, out=tmp_path / "run")
    app, predictor = build_app(tmp_path / "run", ServeConfig(precision="fp32"))
    assert predictor.engine == "torch"  # texts run on PyTorch
    with TestClient(app) as c:
        r = c.post("/predict", json={"texts": ["good film", "awful"]})
        assert r.status_code == 200
        got = np.array([[p["probabilities"][k] for k in clf.classes_] for p in r.json()["predictions"]])
        np.testing.assert_allclose(got, clf.predict_proba(["good film", "awful"]), atol=1e-5)
        assert c.post("/predict", json={"texts": []}).status_code == 422
        assert c.post("/predict", json={"texts": ["x"], "extra": 1}).status_code == 422
        assert c.post("/predict", content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 422


def test_openvino_engine_agrees_with_torch(image_run):
    pytest.importorskip("openvino")
    import torch

    from headstart import load
    from headstart.serve.predictor import Predictor

    clf = load(image_run)
    ov, pt = Predictor.build(clf, "openvino", "fp32"), Predictor.build(clf, "torch", "fp32")
    assert ov.engine == "openvino" and "checked against PyTorch" in ov.describe()
    x = [torch.randint(0, 256, (3, 160, 160), dtype=torch.uint8) for _ in range(5)]
    np.testing.assert_allclose(ov(x), pt(x), atol=1e-4)


# ----------------------------------------------------------------------------- a real server process
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(run, *extra):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "headstart.cli", "serve", str(run), "--port", str(port),
                             "--token", TOKEN, "--engine", "torch", "--body-timeout-s", "1", "--no-access-log",
                             "--graceful-timeout-s", "20", *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
        if proc.poll() is not None:
            pytest.fail(proc.stdout.read())
    return proc, url, port


@pytest.fixture
def server(image_run):
    proc, url, port = _start(image_run)
    yield proc, url, port
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture
def slow_batching_server(image_run):
    """Each input waits up to 1.5 s for a batch to fill: requests stay in flight long enough to signal."""
    proc, url, port = _start(image_run, "--max-wait-ms", "1500", "--max-batch", "64")
    yield proc, url, port
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_real_server_slow_bodies_get_408_and_it_keeps_serving(server):
    proc, url, port = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # slowloris: a body that never comes
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                  + b"\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 5000\r\n\r\n--b\r\n")
        started = time.time()
        reply = s.recv(4096).decode(errors="replace")
        assert time.time() - started < 8
    assert reply.startswith("HTTP/1.1 408"), reply[:200]
    r = httpx.post(url + "/predict", headers=AUTH, files=[("files", ("a.png", _png(), "image/png"))], timeout=30)
    assert r.status_code == 200


def test_real_server_finishes_requests_in_flight_on_sigterm(slow_batching_server):
    proc, url, _ = slow_batching_server
    results = []

    def one():
        try:
            r = httpx.post(url + "/predict", headers=AUTH, timeout=60,
                           files=[("files", (f"{i}.png", _png((i * 20, 0, 0)), "image/png")) for i in range(4)])
            results.append(r.status_code)
        except httpx.HTTPError as exc:
            results.append(repr(exc))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.7)  # all 8 sent and waiting in the batcher (for up to 1.5 s)
    proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(90)
    assert proc.wait(60) == 0
    assert results == [200] * 8, results  # shutdown waited for every request in flight
    with pytest.raises(httpx.ConnectError):  # and then it was gone
        httpx.get(url + "/health", timeout=2)


def test_schemathesis_finds_no_failures(server, tmp_path):
    """Every operation of the OpenAPI schema, fuzzed against the real server: 0 failures, 0 server errors."""
    st = shutil.which("st", path=os.path.dirname(sys.executable)) or shutil.which("st")
    if st is None:
        pytest.skip("schemathesis is not installed")
    _, url, _ = server
    p = subprocess.run([st, "run", url + "/openapi.json", "-H", f"Authorization: Bearer {TOKEN}", "-n", "30",
                        # positive_data_acceptance is left out: the schema says "binary", and no schema can say
                        # "bytes that decode as an image", so random bytes rightly get 415.
                        "--checks", "all", "--exclude-checks", "positive_data_acceptance", "--workers", "1",
                        "--no-color"],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)  # its cache stays out of the tree
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]


# ----------------------------------------------------------------------------- the page, in a browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (.ci/run installs it)")
def test_the_page_in_headless_chromium(server, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    import skimage.data
    from PIL import Image

    proc, url, _ = server
    photo = tmp_path / "chelsea.jpg"
    Image.fromarray(skimage.data.chelsea()).save(photo)  # a real photo
    expected = httpx.post(url + "/predict", headers=AUTH, timeout=30,
                          files=[("files", ("chelsea.jpg", photo.read_bytes(), "image/jpeg"))]).json()
    errors = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 900, "height": 640})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "401" not in m.text else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/", timeout=30_000)
        page.wait_for_selector("#auth:not([hidden])")  # the server wants a token: the page asks for it
        page.fill("#token", TOKEN)
        page.click("#save-token")
        page.wait_for_selector("#image-input:not([hidden])")
        assert "bright, dark" in page.text_content("#classes")
        page.set_input_files("#file", str(photo))
        page.wait_for_selector(".result", timeout=30_000)
        assert page.get_attribute(".result", "data-label") == expected["predictions"][0]["label"]
        assert len(page.query_selector_all(".result .row")) == 2  # one bar per class (top 5 of 2)
        page.screenshot(path=str(tmp_path / "page.png"))
        browser.close()
    assert (tmp_path / "page.png").stat().st_size > 5000
    assert not errors, errors
