"""Make docs/report.png: the top of the report of the demo's two-stage run on the 10,000 test images.

python docs/make_report_screenshot.py [REPORT.html]   (needs headstart[dev] and Debian chromium)

Default input: the report benchmarks/bench_report.py wrote (benchmarks/.runs/report-two-stage-2.html).
"""
import shutil
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

here = Path(__file__).resolve().parent
report = Path(sys.argv[1]) if len(sys.argv) > 1 else here.parent / "benchmarks" / ".runs" / "report-two-stage-2.html"
out = here / "report.png"
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1100, "height": 1500})
    page.goto(report.resolve().as_uri())
    page.screenshot(path=str(out), clip={"x": 0, "y": 0, "width": 1100, "height": 1500})
    browser.close()
print(out)
