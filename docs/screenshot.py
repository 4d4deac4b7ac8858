"""Draws the README's picture: the web page serving a model, one image uploaded, its masks shown.

Usage:
    python docs/screenshot.py --model-dir outputs/demo/model --image outputs/demo/coco/images/X.jpg \\
        [--out docs/web_page.png]

It starts the real server (``rest_api_flask.launcher.start_server``) on loopback, opens the page in
Debian's headless Chromium through Playwright (``apt-get install chromium``; ``make test`` installs
both), uploads the image and waits for the masks, then saves a screenshot of the page.
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
from pathlib import Path

from PIL import Image
from playwright.sync_api import expect, sync_playwright

from rest_api_flask.launcher import start_server

# as root in a container: no sandbox, no GPU, nothing that phones home
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True, help="the model folder to serve")
    parser.add_argument("--image", required=True, type=Path, help="the image to upload")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("web_page.png"))
    parser.add_argument("--width", type=int, default=1100, help="the browser window's width in CSS pixels")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with tempfile.TemporaryDirectory() as work, \
            start_server(args.model_dir, Path(work) / "uploads", Path(work) / "served", infer_with_cpu=True,
                         stop_previous=False) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": args.width, "height": 800})
        page.goto(server.url + "/")
        with page.expect_response(lambda r: r.url.split("?")[0].endswith("/api/v1/predict")) as answer:
            page.set_input_files("#file-input", str(args.image))
        if answer.value.status != 200:
            raise SystemExit(f"the server answered {answer.value.status}: {answer.value.text()}")
        # the page says "Done: N instances found." once it has drawn the answer (N may be 0)
        expect(page.locator("#status")).to_contain_text("Done:", timeout=60_000)
        png = page.screenshot(full_page=True)
        browser.close()
    # 256 colours: a page of flat colours loses nothing visible and the repository stays small
    Image.open(io.BytesIO(png)).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
