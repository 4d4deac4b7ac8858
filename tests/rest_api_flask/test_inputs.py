"""Bad input and safety, through the app: every way an image or a URL can be wrong."""

from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest
from PIL import Image

from rest_api_flask import create_app
from rest_api_flask.encoding import decode_rle
from rest_api_flask.inputs import check_url, clean_filename
from rest_api_flask.errors import ApiError

from http_helpers import local_server
from server_helpers import png_of


def _post_file(client, data: bytes, name="x.png", field="image"):
    return client.post("/api/v1/predict", data={field: (io.BytesIO(data), name)}, content_type="multipart/form-data")


def _error(response, status):
    assert response.status_code == status, (response.status_code, response.data[:300])
    message = response.get_json()["error"]
    assert isinstance(message, str) and len(message) > 20
    return message


def test_non_image_truncated_and_empty_inputs(client, sample_png):
    assert "not an image" in _error(_post_file(client, b"hello, this is text"), 415)
    assert "truncated" in _error(_post_file(client, sample_png[: len(sample_png) // 2]), 422)
    assert "empty" in _error(_post_file(client, b""), 400)
    assert "empty" in _error(client.post("/api/v1/predict"), 400)
    assert "'image'" in _error(_post_file(client, sample_png, field="file"), 400)
    assert "image_base64" in _error(client.post("/api/v1/predict", json={"picture": "abc"}), 400)
    assert "not valid base64" in _error(client.post("/api/v1/predict", json={"image_base64": "@@not base64@@"}), 400)
    assert "not valid JSON" in _error(client.post("/api/v1/predict", data=b"{oops", content_type="application/json"), 400)
    assert "Content-Type" in _error(client.post("/api/v1/predict", data=b"abc", content_type="text/plain"), 415)
    # a data: URL prefix, as browsers produce, is accepted
    ok = client.post("/api/v1/predict", json={"image_base64": "data:image/png;base64," + base64.b64encode(sample_png).decode()})
    assert ok.status_code == 200


def test_oversize_upload_is_413(predictor, folders, sample_png):
    app = create_app({"PREDICTOR": predictor, "UPLOAD_FOLDER": str(folders[0]), "OUTPUT_FOLDER": str(folders[1]),
                      "WARMUP": False, "MAX_UPLOAD_MB": 0.01})
    response = _post_file(app.test_client(), sample_png + b"\0" * 20_000)
    assert "--max-upload-mb" in _error(response, 413)


def test_decompression_bomb_is_refused_before_decoding(client):
    bomb = png_of(np.zeros((8000, 6000), dtype=np.uint8), optimize=True)  # 48 Mpx in a small file
    assert len(bomb) < 200_000
    assert "--max-pixels" in _error(_post_file(client, bomb), 413)


def test_grey_rgba_16bit_and_exif_rotated_images_are_handled(client, predictor, sample_png):
    rgb = np.array(Image.open(io.BytesIO(sample_png)).convert("RGB"))
    grey = rgb.mean(axis=2).astype(np.uint8)
    cases = {
        "grey": (png_of(grey), np.stack([grey] * 3, axis=-1)),
        "rgba": (png_of(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])), rgb),
        "16bit": (png_of((grey.astype(np.uint16) * 257)), None),
    }
    for name, (data, expected_image) in cases.items():
        response = _post_file(client, data, name=f"{name}.png")
        assert response.status_code == 200, (name, response.get_json())
        body = response.get_json()
        assert (body["image"]["height"], body["image"]["width"]) == rgb.shape[:2]
        if expected_image is not None:
            assert body["num_instances"] == len(predictor(expected_image, threshold=0.0)), name
    # EXIF orientation 6 (rotate 90 degrees clockwise to view): width and height trade places
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", exif=exif, quality=95)
    body = _post_file(client, buffer.getvalue(), name="phone.jpg").get_json()
    assert (body["image"]["width"], body["image"]["height"]) == (rgb.shape[0], rgb.shape[1])
    assert body["instances"][0]["mask_rle"]["size"] == [rgb.shape[1], rgb.shape[0]]


def test_path_like_names_are_reduced_to_plain_names(client, sample_png, folders):
    body = _post_file(client, sample_png, name="../../../etc/evil.png").get_json()
    assert body["image"]["filename"] == "evil.png"
    assert clean_filename("..\\..\\windows\\x.png") == "x.png" and clean_filename("../..") is None
    written = sorted(str(p.relative_to(folders[0].parent)) for p in folders[0].parent.rglob("*") if p.is_file())
    assert all(p.startswith(("uploads/api/", "outputs/results/")) for p in written), written


@pytest.fixture
def url_client(predictor, folders):
    """The app with the test-only switch that lets URL fetches reach 127.0.0.1 (and short limits)."""
    app = create_app({"PREDICTOR": predictor, "UPLOAD_FOLDER": str(folders[0]), "OUTPUT_FOLDER": str(folders[1]),
                      "THRESHOLD": 0.0, "WARMUP": False, "URL_ALLOW_LOOPBACK": True, "URL_TIMEOUT_S": 2.0,
                      "URL_MAX_MB": 1})
    return app.test_client()


def test_url_images_are_fetched_with_the_test_switch(url_client, client, http_server, predictor, sample_png):
    url = http_server.serve("/pic.png", sample_png)
    body = url_client.post("/api/v1/predict", json={"url": url}).get_json()
    expected = predictor(np.array(Image.open(io.BytesIO(sample_png)).convert("RGB")), threshold=0.0)
    assert body["image"]["filename"] == "pic.png" and body["num_instances"] == len(expected)
    assert np.array_equal(decode_rle(body["instances"][0]["mask_rle"]), expected.masks[0])  # this Predictor: row for row
    # by default loopback is refused, and the local server is never contacted
    before = http_server.count("/pic.png")
    assert "loopback" in _error(client.post("/api/v1/predict", json={"url": url}), 400)
    assert http_server.count("/pic.png") == before


@pytest.mark.parametrize("url, words", [
    ("http://127.0.0.1:9/x.png", "loopback"),
    ("http://localhost:9/x.png", "loopback"),
    ("http://[::1]:9/x.png", "loopback"),
    ("http://10.0.0.1/x.png", "private"),
    ("http://192.168.1.1/x.png", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://[::ffff:169.254.169.254]/", "link-local"),
    ("http://0.0.0.0/x.png", "reserved"),
    ("http://100.100.100.200/latest/meta-data/", "not on the public internet"),  # shared range (CGNAT)
    ("file:///etc/passwd", "http"),
    ("ftp://example.com/x.png", "http"),
])
def test_internal_urls_are_refused(client, url, words):
    assert words in _error(client.post("/api/v1/predict", json={"url": url}), 400)


def test_batch_size_and_single_image_are_checked_before_any_fetch(url_client, http_server, sample_png):
    url = http_server.serve("/many.png", sample_png)
    too_many = url_client.post("/api/v1/predict/batch", json=[{"url": url}] * 17)
    assert too_many.status_code == 413 and "at most 16" in too_many.get_json()["error"]
    assert http_server.count("/many.png") == 0  # refused before a single download
    two = url_client.post("/api/v1/predict", data={"image": [(io.BytesIO(sample_png), "a.png"), (io.BytesIO(sample_png), "b.png")]},
                          content_type="multipart/form-data")
    assert two.status_code == 400 and "/api/v1/predict/batch" in two.get_json()["error"]


def test_every_resolved_address_is_checked(monkeypatch):
    import socket

    # a host name that resolves to one public and one private address (DNS here is offline, so the
    # resolver is replaced: the check under test is what happens with its answer)
    answers = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 80)),
               (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", 80))]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: answers)
    with pytest.raises(ApiError, match="10.0.0.7, a private"):
        check_url("http://mixed.example/x.png")


def test_slow_huge_and_redirected_downloads_are_stopped(url_client, http_server):
    slow = http_server.serve("/slow", b"x" * 40, trickle_s=0.3)  # a byte every 0.3 s: 12 s in all
    huge = http_server.serve("/huge", b"\0" * (200 * 65536), length=False)  # bigger than any limit, no length
    moved = http_server.serve("/redirect", redirect="http://10.1.2.3/image.png")  # to a private address
    start = time.monotonic()
    assert "longer than 2 s" in _error(url_client.post("/api/v1/predict", json={"url": slow}), 422)
    assert time.monotonic() - start < 6
    assert "limit of 1 MB" in _error(url_client.post("/api/v1/predict", json={"url": huge}), 413)
    assert "private" in _error(url_client.post("/api/v1/predict", json={"url": moved}), 400)


def test_the_connection_goes_to_the_checked_address(predictor, folders, http_server, monkeypatch):
    # DNS rebinding: a name answers with a public address when checked, then with 127.0.0.1.
    # The fetch connects to the checked address, so the local server is never reached. (DNS is
    # offline here, so the resolver's answers are given; the real one serves every other name.)
    import socket

    real = socket.getaddrinfo
    answers = iter(["93.184.216.34", "127.0.0.1", "127.0.0.1"])

    def rebinding(host, *args, **kwargs):
        if host == "rebind.example":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), 80))]
        if host == "93.184.216.34":  # the checked public address: unreachable offline, fail at once
            raise OSError("network unreachable (test)")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    app = create_app({"PREDICTOR": predictor, "UPLOAD_FOLDER": str(folders[0]), "OUTPUT_FOLDER": str(folders[1]),
                      "WARMUP": False, "URL_TIMEOUT_S": 3.0})
    port = http_server.url("/").split(":")[2].split("/")[0]
    http_server.serve("/secret.png", b"internal data")
    response = app.test_client().post("/api/v1/predict", json={"url": f"http://rebind.example:{port}/secret.png"})
    assert "cannot be fetched" in _error(response, 422)
    assert http_server.count() == 0


def test_https_urls_keep_their_host_name_for_tls(tmp_path, monkeypatch):
    # the fetch connects to the checked IP address; TLS must still verify the certificate of the
    # host *name* (SNI and hostname check): a certificate made for "localhost" only, trusted here
    import shutil
    import ssl
    import subprocess

    from rest_api_flask.inputs import fetch_url

    assert shutil.which("openssl"), "the openssl command is needed (apt-get install openssl)"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    with local_server(tls=context) as server:
        server.serve("/x.png", echo_host=True)
        port = server.port
        assert fetch_url(f"https://localhost:{port}/x.png", max_bytes=10**6, timeout=5,
                         allow_loopback=True) == f"host=localhost:{port}".encode()
        with pytest.raises(ApiError, match="cannot be fetched"):  # the certificate does not name 127.0.0.1
            fetch_url(f"https://127.0.0.1:{port}/x.png", max_bytes=10**6, timeout=5, allow_loopback=True)
