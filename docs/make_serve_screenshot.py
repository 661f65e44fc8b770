"""Make docs/serve-page.png: a Lite0 run on 20 Fashion-MNIST labels per class, served, one test image uploaded.

python docs/make_serve_screenshot.py   (needs headstart[dev] and Debian chromium; about two minutes)
"""
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image
from playwright.sync_api import sync_playwright

from headstart import TransferClassifier
from headstart.data.datasets import fashion_mnist, per_class_subset

NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
out = Path(__file__).resolve().parent / "serve-page.png"
tmp = Path(tempfile.mkdtemp())
x, y = fashion_mnist("train")
idx = per_class_subset(y, 20, seed=0)
run = tmp / "fashion-lite0"
TransferClassifier("timm:tf_efficientnet_lite0", strategy="linear-probe", baselines=False).fit(
    x[idx], [NAMES[i] for i in y[idx]], out=run)
xt, yt = fashion_mnist("test")
photo = tmp / "ankle-boot.png"
Image.fromarray(xt[0]).resize((112, 112)).save(photo)  # test image 0 is an ankle boot
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
server = subprocess.Popen([sys.executable, "-m", "headstart.cli", "serve", str(run), "--port", str(port)])
try:
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(url + "/health").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 820, "height": 560})
        page.goto(url)
        page.wait_for_selector("#image-input:not([hidden])")
        page.set_input_files("#file", str(photo))
        page.wait_for_selector(".result")
        page.screenshot(path=str(out), full_page=True)
        print(page.get_attribute(".result", "data-label"), "->", out)
        browser.close()
finally:
    server.terminate()
    server.wait()
