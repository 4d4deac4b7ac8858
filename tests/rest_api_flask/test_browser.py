"""The web page at ``/`` in headless Chromium, against the real server on loopback with a tiny model.

Debian's chromium (``apt-get install chromium``; ``make test`` installs it) is driven by Playwright's
Python package through ``executable_path``, so no browser is downloaded. Nothing is mocked: the page
talks to the real server process (``flask_app.py``, waitress, ``--threshold 0``: the ``server``
fixture of conftest.py) serving the tiny model, trained for three iterations.

Screenshots (phone and desktop size) go to ``$WEB_SCREENSHOT_DIR`` when set, else the test's tmp dir.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from playwright.sync_api import expect, sync_playwright
from rest_api_flask.encoding import decode_rle

pytestmark = pytest.mark.slow

# Running as root in a container: no sandbox, no GPU, and nothing that phones home. Playwright gives
# every launch a fresh temporary profile (its own --user-data-dir) and adds --headless itself.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _is_predict(response) -> bool:
    return response.url.split("?")[0].endswith("/api/v1/predict") and response.request.method == "POST"


@pytest.fixture(scope="module")
def image_path(tiny_coco) -> Path:
    data = json.loads(tiny_coco["val"].read_text())
    return tiny_coco["val"].parent / data["images"][0]["file_name"]


@contextlib.contextmanager
def _serve(wsgi_app):
    """``wsgi_app`` under waitress on 127.0.0.1 (a free port), in a thread; yields its base URL."""
    from waitress.server import create_server

    wsgi = create_server(wsgi_app, host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=wsgi.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{wsgi.effective_port}"
    finally:
        wsgi.close()
        wsgi.task_dispatcher.shutdown()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def browser():
    executable = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(executable).exists():
        pytest.fail("Debian's chromium is not installed: run `make test` (as root it installs it) or "
                    "`apt-get install -y chromium`", pytrace=False)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("WEB_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _alpha_stats(page) -> dict:
    """How many overlay-canvas pixels are painted, and the highest alpha among them."""
    return page.evaluate("""() => {
        const c = document.getElementById('overlay');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let painted = 0, max = 0;
        for (let i = 3; i < d.length; i += 4) { if (d[i]) { painted++; if (d[i] > max) max = d[i]; } }
        return {painted, max};
    }""")


def _upload(page, path) -> dict:
    """Chooses ``path`` in the file input; returns the JSON of the prediction the page asked for."""
    with page.expect_response(_is_predict) as answer:
        page.set_input_files("#file-input", str(path))
    assert answer.value.status == 200, answer.value.text()
    return answer.value.json()


def test_upload_shows_masks_and_downloads_match_the_json(server, browser, image_path, shots, tmp_path):
    base = server.url
    page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    requested, script_errors = [], []
    page.on("request", lambda r: requested.append(r.url))
    page.on("pageerror", lambda e: script_errors.append(str(e)))
    page.goto(base + "/")
    # The slider starts at the server's --threshold (0 here), not at the page's own 0.5.
    assert float(page.locator("#threshold").input_value()) == 0
    expect(page.locator("#threshold-value")).to_have_text("0.00")
    expect(page.locator("#model-info")).to_contain_text("class")  # filled from GET api/v1/model

    # At threshold 0 even a barely trained model finds something.
    result = _upload(page, image_path)
    assert result["threshold"] == 0 and result["num_instances"] > 0 and result["masked_fraction"] > 0
    expect(page.locator("#result")).to_be_visible()
    rows = page.locator("#instances tbody tr")
    expect(rows).to_have_count(result["num_instances"])
    expect(page.locator("#no-instances")).to_be_hidden()
    direct = requests.post(base + "/api/v1/predict", data={"threshold": "0"},
                           files={"image": (image_path.name, image_path.read_bytes())}, timeout=60).json()
    assert direct["num_instances"] == result["num_instances"] == rows.count()
    best = result["instances"][0]
    expect(rows.nth(0)).to_contain_text(best["class_name"])
    expect(rows.nth(0)).to_contain_text(f"{best['score']:.3f}")
    expect(page.locator("#masked-fraction")).to_have_text(f"{100 * result['masked_fraction']:.1f}\u00a0%")

    # The page asks for plain run lengths and draws exactly the pixels pycocotools decodes from them.
    height, width = result["image"]["height"], result["image"]["width"]
    assert all(isinstance(inst["mask_rle"]["counts"], list) for inst in result["instances"])
    masks = np.stack([decode_rle(inst["mask_rle"]) for inst in result["instances"]])
    assert masks.shape[1:] == (height, width)
    summary = page.locator("#summary")
    assert float(summary.get_attribute("data-shown-fraction")) == pytest.approx(masks.any(0).mean(), abs=1e-9)
    largest = int(masks.sum(axis=(1, 2)).argmax())
    rows.nth(largest).locator("input[type=checkbox]").uncheck()
    others = np.delete(masks, largest, axis=0).any(0).mean()
    assert float(summary.get_attribute("data-shown-fraction")) == pytest.approx(others, abs=1e-9)
    rows.nth(largest).locator("input[type=checkbox]").check()

    # Mask opacity and the toggles act on the drawn overlay.
    page.locator("#show-boxes").uncheck()
    page.fill("#opacity", "100")
    full = _alpha_stats(page)
    assert full["painted"] > 0 and full["max"] == 255
    page.fill("#opacity", "40")
    assert abs(_alpha_stats(page)["max"] - 102) <= 2
    page.click("#hide-all")
    assert _alpha_stats(page)["painted"] == 0
    page.click("#show-all")
    assert _alpha_stats(page)["painted"] == full["painted"]
    page.locator("#show-boxes").check()
    page.screenshot(path=str(shots / "web_desktop.png"), full_page=True)

    # Downloads: relative links (they must work behind a proxy), files equal to the JSON.
    for link in ("#dl-overlay", "#dl-masks", "#dl-json", "#dl-labelme"):
        assert page.get_attribute(link, "href").startswith(f"api/v1/results/{result['id']}/")
    downloaded = {}
    for link in ("#dl-overlay", "#dl-masks", "#dl-json", "#dl-labelme"):
        with page.expect_download() as download:
            page.click(link)
        downloaded[link] = tmp_path / download.value.suggested_filename
        download.value.save_as(downloaded[link])
    with zipfile.ZipFile(downloaded["#dl-masks"]) as archive:
        names = sorted(archive.namelist())
        assert len(names) == result["num_instances"] + 1 and "union.png" in names
        for k, inst in enumerate(result["instances"]):
            name = f"instance_{k:03d}_{inst['class_name']}.png"
            assert name in names
            png = np.array(Image.open(io.BytesIO(archive.read(name))))
            assert png.shape == (height, width) and set(np.unique(png)) <= {0, 255}
            assert np.array_equal(png == 255, masks[k]), name
        union = np.array(Image.open(io.BytesIO(archive.read("union.png"))))
        assert np.array_equal(union == 255, masks.any(0))
    assert json.loads(downloaded["#dl-json"].read_text()) == result
    labelme = json.loads(downloaded["#dl-labelme"].read_text())  # the predictions to correct in labelme
    assert (labelme["imageWidth"], labelme["imageHeight"]) == (width, height) and labelme["imageData"]
    assert downloaded["#dl-labelme"].suffix == ".json"
    assert {s["label"] for s in labelme["shapes"]} <= {inst["class_name"] for inst in result["instances"]}
    assert Image.open(downloaded["#dl-overlay"]).size == (width, height)

    # Letting go of the slider asks again with the same image: nothing scores 0.99 here.
    with page.expect_response(_is_predict) as answer:
        page.fill("#threshold", "0.99")
    high = answer.value.json()
    assert high["threshold"] == pytest.approx(0.99) and high["num_instances"] == 0 and high["id"] != result["id"]
    expect(rows).to_have_count(0)
    expect(page.locator("#no-instances")).to_be_visible()
    assert page.get_attribute("#dl-masks", "href") == f"api/v1/results/{high['id']}/masks.zip"

    # Everything the page loaded came from the server itself (works offline, no CDN).
    assert requested and all(url.startswith((base + "/", "blob:", "data:")) for url in requested), requested
    assert script_errors == []
    page.close()


def test_phone_sized_screen(server, browser, image_path, shots):
    page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                            has_touch=True)
    page.goto(server.url + "/")
    result = _upload(page, image_path)
    expect(page.locator("#instances tbody tr")).to_have_count(result["num_instances"])
    # Nothing wider than the screen: no sideways scrolling, the picture and buttons fit.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    for selector in ("#viewer", "#dl-masks", "#url-button", "#threshold"):
        box = page.locator(selector).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, selector
    page.screenshot(path=str(shots / "web_phone.png"), full_page=True)
    page.close()


def test_api_errors_are_shown_on_the_page(server, browser, tmp_path):
    page = browser.new_page()
    page.goto(server.url + "/")
    error = page.locator("#error")
    expect(error).to_be_hidden()

    text_file = tmp_path / "notes.txt"
    text_file.write_bytes(b"this is not a picture")
    with page.expect_response(_is_predict) as answer:
        page.set_input_files("#file-input", str(text_file))
    assert answer.value.status >= 400
    expect(error).to_be_visible()
    expect(error).to_contain_text(f"Error {answer.value.status}")
    expect(error).to_contain_text(answer.value.json()["error"])

    # The server refuses to fetch from loopback; the page shows why.
    page.fill("#url-input", server.url + "/static/web/style.css")
    with page.expect_response(_is_predict) as answer:
        page.click("#url-button")
    assert answer.value.status == 400
    expect(error).to_contain_text(answer.value.json()["error"])

    # A URL that is not http(s) is caught before any request.
    page.fill("#url-input", "ftp://example.com/a.png")
    page.click("#url-button")
    expect(error).to_contain_text("must start with http")
    page.close()


def test_page_is_served_with_relative_links_and_a_strict_policy(server):
    response = requests.get(server.url + "/", timeout=10)
    assert response.status_code == 200 and "text/html" in response.headers["Content-Type"]
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    html = response.text
    assert 'name="viewport"' in html
    assert 'src="static/web/app.js"' in html and 'href="static/web/style.css"' in html
    assert 'src="/' not in html and 'href="/' not in html  # relative only: works under a proxy prefix
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        asset = requests.get(f"{server.url}/static/web/{name}", timeout=10)
        assert asset.status_code == 200 and kind in asset.headers["Content-Type"], name


def _drop_or_paste(page, data: bytes, name: str, event: str) -> dict:
    """Drops ``data`` as a file on the drop zone, or pastes it, as a user's browser would deliver it."""
    script = """([b64, name, event]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, {type: 'image/jpeg'}));
        const init = {bubbles: true, cancelable: true};
        if (event === 'drop') document.getElementById('drop-zone').dispatchEvent(new DragEvent('drop', {...init, dataTransfer: dt}));
        else document.dispatchEvent(new ClipboardEvent('paste', {...init, clipboardData: dt}));
    }"""
    with page.expect_response(_is_predict) as answer:
        page.evaluate(script, [base64.b64encode(data).decode(), name, event])
    assert answer.value.status == 200, answer.value.text()
    return answer.value.json()


def test_drop_paste_and_url_under_a_path_prefix(app, browser, image_path, http_server, tmp_path):
    # Jupyter's server proxy and similar put the app under a path (here /proxy/5000/); the page's
    # relative URLs must then reach the API there too. werkzeug's dispatcher sets SCRIPT_NAME as they do.
    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    from werkzeug.wrappers import Response

    app.config["URL_ALLOW_LOOPBACK"] = True  # the test-only switch: our image server is on 127.0.0.1
    image_url = http_server.serve("/pictures/shapes.jpg", image_path.read_bytes())
    with _serve(DispatcherMiddleware(Response("not here", status=404), {"/proxy/5000": app})) as base:
        page = browser.new_page(accept_downloads=True)
        requested = []
        page.on("request", lambda r: requested.append(r.url))
        page.goto(base + "/proxy/5000/")
        page_url = base + "/proxy/5000/"

        dropped = _drop_or_paste(page, image_path.read_bytes(), "dropped.jpg", "drop")
        assert dropped["image"]["filename"] == "dropped.jpg" and dropped["num_instances"] > 0
        expect(page.locator("#instances tbody tr")).to_have_count(dropped["num_instances"])
        with page.expect_download() as download:
            page.click("#dl-masks")
        download.value.save_as(tmp_path / "masks.zip")
        with zipfile.ZipFile(tmp_path / "masks.zip") as archive:
            assert len(archive.namelist()) == dropped["num_instances"] + 1

        pasted = _drop_or_paste(page, image_path.read_bytes(), "pasted.jpg", "paste")
        assert pasted["id"] != dropped["id"] and pasted["num_instances"] == dropped["num_instances"]
        expect(page.locator("#dl-json")).to_have_attribute("href", f"api/v1/results/{pasted['id']}/result.json")

        page.fill("#url-input", image_url)
        with page.expect_response(_is_predict) as answer:
            page.click("#url-button")
        from_url = answer.value.json()
        assert answer.value.status == 200 and from_url["num_instances"] == dropped["num_instances"]
        expect(page.locator("#dl-json")).to_have_attribute("href", f"api/v1/results/{from_url['id']}/result.json")
        # The picture under the masks is the user's URL itself, loaded by the browser.
        expect(page.locator("#base-image")).to_have_attribute("src", image_url)
        # the function form: a bare expression is polled with eval, which the page's Content-Security-Policy refuses
        page.wait_for_function("() => document.getElementById('base-image').naturalWidth > 0")

        ours = [url for url in requested if not url.startswith(("blob:", image_url))]
        assert ours and all(url.startswith(page_url) for url in ours), requested
        page.close()


def test_the_grey_image_box_greys_the_picture_and_asks_for_a_grey_overlay(predictor, browser, image_path, tmp_path):
    from rest_api_flask import create_app

    app = create_app({"PREDICTOR": predictor, "UPLOAD_FOLDER": str(tmp_path / "u"), "OUTPUT_FOLDER": str(tmp_path / "o"),
                      "THRESHOLD": 0.0, "WARMUP": False, "REMOVE_COLORS": True})
    with _serve(app) as base:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(base + "/")
        expect(page.locator("#grey-image")).to_be_checked()  # the server's --remove-colors
        result = _upload(page, image_path)
        # the page asked for a grey overlay: the one its result links is the API's with remove_colors=1
        def drawn(url):
            return np.array(Image.open(io.BytesIO(requests.get(base + url, timeout=30).content)).convert("RGB"))

        with image_path.open("rb") as fh:
            data = fh.read()
        asked = {flag: requests.post(base + "/api/v1/predict", files={"image": ("a.jpg", data)},
                                     data={"threshold": "0", "remove_colors": flag}, timeout=60).json()
                 for flag in ("1", "0")}
        assert np.array_equal(drawn(result["links"]["overlay"]), drawn(asked["1"]["links"]["overlay"]))
        assert not np.array_equal(drawn(result["links"]["overlay"]), drawn(asked["0"]["links"]["overlay"]))
        expect(page.locator("#base-image")).to_have_class("grey")
        assert page.evaluate("getComputedStyle(document.getElementById('base-image')).filter") == "grayscale(1)"
        page.uncheck("#grey-image")
        expect(page.locator("#base-image")).not_to_have_class("grey")
        page.close()
