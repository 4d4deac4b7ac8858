"""The real server process (waitress on loopback): every endpoint, bad input, concurrency, the CLI.

Started as the notebooks start it (``rest_api_flask.launcher``: ``python -m rest_api_flask --ready-file ...``);
the file form ``python rest_api_flask/flask_app.py`` runs in the command-line tests.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image


from detections import assert_same_detections
from server_helpers import FLASK_APP, REPO, agent_log, fake_ngrok_binary, png_of, start_server


def _image(sample_paths, k: int) -> np.ndarray:
    """The k-th distinct test image: a synthetic image shifted by k pixels (80 different images)."""
    base = np.array(Image.open(sample_paths[k % len(sample_paths)]).convert("RGB"))
    return np.roll(base, shift=k, axis=1)


def test_prints_its_address_and_health_answers(server, predictor):
    assert f"Serving on {server.url}" in server.lines  # for people; programs read the ready file
    assert server.url == f"http://127.0.0.1:{server.port}" and server.info["pid"] == server.process.pid
    assert server.info["device"] == "cpu" and server.info["tunnel_state"] == "none" and server.public_url is None
    health = requests.get(server.url + "/health", timeout=10)
    assert health.status_code == 200
    assert health.json()["status"] == "ok" and health.json()["model_loaded"] is True
    assert health.json()["classes"] == predictor.class_names


def test_every_endpoint_over_http(server, sample_png):
    url = server.url
    body = requests.post(url + "/api/v1/predict", files={"image": ("a b.png", sample_png)}, timeout=30).json()
    assert body["image"]["filename"] == "a_b.png" and body["num_instances"] == len(body["instances"])
    for link in list(body["links"].values()) + [i["links"]["mask"] for i in body["instances"]]:
        assert requests.get(url + link, timeout=10).status_code == 200, link
    archive = zipfile.ZipFile(io.BytesIO(requests.get(url + body["links"]["masks_zip"], timeout=10).content))
    assert len(archive.namelist()) == body["num_instances"] + 1
    batch = requests.post(url + "/api/v1/predict/batch", files=[("images", ("1.png", sample_png)),
                                                                ("images", ("2.png", sample_png))], timeout=30)
    assert [r["image"]["filename"] for r in batch.json()["results"]] == ["1.png", "2.png"]
    as_json = requests.post(url + "/api/v1/predict", json={"image_base64": base64.b64encode(sample_png).decode()}, timeout=30)
    assert as_json.json()["num_instances"] == body["num_instances"]
    assert requests.get(url + "/api/v1/model", timeout=10).json()["engine"] == "torchvision"
    assert "/api/v1/predict" in requests.get(url + "/openapi.json", timeout=10).json()["paths"]
    legacy = requests.post(url + "/api/detect-area-base64", timeout=30, json={
        "threshold_value": 0.0, "image_string": base64.b64encode(sample_png).decode(),
        "input_image_name": "in.png", "output_image_name": "out.png"}).json()
    assert legacy["status_code"] == 200 and len(legacy["data"]["detected_bounding_boxes"]) == body["num_instances"]
    page = requests.get(url + "/", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]


def test_bad_input_over_http(server, sample_png):
    url = server.url + "/api/v1/predict"
    too_big = requests.post(url, files={"image": ("big.png", b"\0" * (21 * 2**20))}, timeout=60)
    assert too_big.status_code == 413 and "--max-upload-mb" in too_big.json()["error"]
    assert requests.post(url, files={"image": ("x.png", b"text")}, timeout=10).status_code == 415
    assert requests.post(url, files={"image": ("x.png", sample_png[:200])}, timeout=10).status_code == 422
    assert requests.post(url, timeout=10).status_code == 400
    assert requests.post(url, files={"photo": ("x.png", sample_png)}, timeout=10).status_code == 400
    assert requests.post(url, json={"image_base64": "!!"}, timeout=10).status_code == 400
    refused = requests.post(url, json={"url": server.url + "/health"}, timeout=10)  # the server itself: loopback
    assert refused.status_code == 400 and "loopback" in refused.json()["error"]
    assert requests.post(url, json={"url": "http://169.254.169.254/latest/meta-data/"}, timeout=10).status_code == 400
    assert requests.get(server.url + "/api/v1/results/" + "0" * 32 + "/overlay.png", timeout=10).status_code == 404
    evil = requests.post(url, files={"image": ("../../../../tmp/evil.png", sample_png)}, timeout=30).json()
    assert evil["image"]["filename"] == "evil.png"
    roots = (server.upload_folder, server.output_folder)
    written = [p.relative_to(server.upload_folder.parent) for root in roots for p in root.rglob("*")]
    assert all(str(p).startswith(("srv_uploads/", "srv_outputs/")) for p in written)


def _raw_post(url: str, body, headers: dict) -> tuple[int, str, dict]:
    """POST with Python's http.client, sending the whole body at once as urllib does (no Expect unless given);
    a body given as an iterator of pieces is sent with Transfer-Encoding: chunked, one chunk per piece."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.request("POST", parts.path, body=body, headers={"Content-Type": "image/png", **headers},
                           encode_chunked=not isinstance(body, bytes))
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type"), json.loads(response.read())
    finally:
        connection.close()


def test_every_oversize_refusal_is_the_json_413_whatever_the_client(server, sample_png):
    """waitress's own cap follows --max-upload-mb (20 MB here) and answers as the app does; the rest of a
    refused body is read, so a client that sends it all without waiting (urllib) reads the 413, no reset."""
    import urllib.error
    import urllib.request

    url = server.url + "/api/v1/predict"
    body = b"\0" * (64 * 2**20)
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/octet-stream"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 413 and refused.value.headers["Content-Type"] == "application/json"
    assert "--max-upload-mb" in json.loads(refused.value.read())["error"]
    for headers in ({}, {"Expect": "100-continue"}):
        status, kind, answer = _raw_post(url, body, headers)
        assert (status, kind) == (413, "application/json") and "20 MB" in answer["error"], (headers, answer)
    # a body in chunks (no Content-Length: refused only once 20 MB have arrived) is read to its last chunk too
    status, kind, answer = _raw_post(url, iter([b"\0" * 2**20] * 64), {})
    assert (status, kind) == (413, "application/json") and "20 MB" in answer["error"], answer
    # just over the limit (multipart, by requests) is refused the same way; the server serves on
    over = requests.post(url, files={"image": ("big.png", b"\0" * (20 * 2**20))}, timeout=60)
    assert over.status_code == 413 and "--max-upload-mb" in over.json()["error"]
    ok = requests.post(url, files={"image": ("a.png", sample_png)}, timeout=30)
    assert ok.status_code == 200 and ok.json()["num_instances"] == len(ok.json()["instances"])
    curl = subprocess.run(["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "-F", "image=@-;filename=x.png", url],
                          input=body, capture_output=True, timeout=60)  # curl sends Expect: 100-continue
    answer, _, code = curl.stdout.decode().rpartition("\n")
    assert code == "413" and "--max-upload-mb" in json.loads(answer)["error"], curl


def test_concurrent_requests_each_get_their_own_result(server, predictor, sample_paths):
    images = [_image(sample_paths, k) for k in range(80)]
    pngs = [png_of(img) for img in images]
    expected = [predictor(img, threshold=0.0) for img in images]

    def client(thread: int):
        session = requests.Session()
        out = []
        for r in range(10):
            k = thread * 10 + r
            response = session.post(server.url + "/api/v1/predict", files={"image": (f"img{k}.png", pngs[k])}, timeout=120)
            out.append((k, response.status_code, response.json()))
        return out

    with ThreadPoolExecutor(8) as pool:
        answers = [a for chunk in pool.map(client, range(8)) for a in chunk]
    assert len(answers) == 80 and len({body["id"] for _, _, body in answers}) == 80
    for k, status, body in answers:
        assert status == 200 and body["image"]["filename"] == f"img{k}.png"
        assert body["num_instances"] == len(expected[k]), k
        # the server process against this process's Predictor: as sets (tied scores come out in either order)
        assert_same_detections(body, expected[k], score_atol=1e-4, box_atol=0.05, mask_iou=0.99, mask_pixels=2,
                               what=f"request {k}")
    # and the stored result of each is its own
    k, _, body = answers[37]
    stored = requests.get(server.url + body["links"]["result_json"], timeout=10).json()
    assert stored["id"] == body["id"] and stored["image"]["filename"] == f"img{k}.png"


def _cli(*args, env_extra=None, timeout=60):
    env = {**os.environ, "NGROK_AUTHTOKEN": "", **(env_extra or {})}
    return subprocess.run([sys.executable, str(FLASK_APP), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=REPO)


@pytest.mark.parametrize("args, words", [
    (["--model-dir", "/no/such/model"], "--model-dir"),
    (["--model-dir", ".", "--threshold", "2"], "--threshold must be between 0 and 1"),
    (["--model-dir", ".", "--auth", "nopassword"], "USER:PASSWORD"),
    (["--model-dir", ".", "--threshold", "high"], "--threshold: invalid float value"),
    (["--model-dir", ".", "--tunnel", "cloud"], "invalid choice"),
    (["--upload-folder", "u"], "--model-dir"),
    (["--model-dir", ".", "--tunnel", "ngrok", "--auth", "demo:short"], "8 to 128 characters"),
])
def test_cli_user_errors_are_one_line_and_exit_2(args, words):
    result = _cli(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_a_bare_weights_file_names_the_import_script(tmp_path):
    weights = tmp_path / "model_final.pth"
    weights.write_bytes(b"\0")
    result = _cli("--model-dir", str(weights))
    assert result.returncode == 2 and "scripts/import_detectron2.py" in result.stderr


def test_weights_that_are_neither_a_file_nor_a_url_are_one_line(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("MODEL:\n  ROI_HEADS:\n    NUM_CLASSES: 1\n")
    result = _cli("--weights", str(tmp_path / "nope.pth"), "--config-file", str(config), "--port", "0",
                  "--upload-folder", str(tmp_path / "u"), "--output-folder", str(tmp_path / "o"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "nope.pth' is neither a file nor an http(s) URL" in result.stderr
    assert not (tmp_path / "o" / "models").exists()  # stopped before anything was imported


def test_no_model_at_all_says_which_flag_to_give(tmp_path):
    # the older REST API kit's serve command, which named no model
    result = _cli("--upload-folder", str(tmp_path / "u"), "--use-ngrok", "--infer-with-cpu")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "no model given" in result.stderr and "--model-dir coco" in result.stderr and "--weights" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_port_in_use_is_one_line(server, model_dir, tmp_path):
    port = server.url.rsplit(":", 1)[1]  # the module's server holds it
    result = _cli("--model-dir", str(model_dir), "--upload-folder", str(tmp_path / "u"),
                  "--output-folder", str(tmp_path / "o"), "--port", port, "--infer-with-cpu")
    assert result.returncode == 2 and "pass another --port" in result.stderr and "Traceback" not in result.stderr


def test_model_folder_without_a_model_is_one_line(tmp_path):
    result = _cli("--model-dir", str(tmp_path), "--upload-folder", str(tmp_path / "u"), "--output-folder", str(tmp_path / "o"))
    assert result.returncode == 2 and "model.json" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_offline_ngrok_keeps_serving_locally_and_python_m_works(model_dir, tmp_path, sample_png):
    # the real pyngrok tries to download the ngrok program into an empty folder; offline that fails
    env = {"PYNGROK_NGROK_PATH": str(tmp_path / "ngrok-bin" / "ngrok"), "HOME": str(tmp_path)}
    srv = start_server(model_dir, tmp_path, "--ngrok-authtoken", "dummy-token", "--threshold", "0", tunnel="ngrok", env=env)
    try:
        # start_server waited for the tunnel's outcome in the ready file
        assert srv.info["tunnel_state"] == "failed" and srv.public_url is None
        assert srv.tunnel_error.startswith("the ngrok program cannot be downloaded"), srv.info
        # the server printed its warning before writing the ready file; the pipe's reader may be behind
        deadline = time.monotonic() + 15
        while "keeps serving locally" not in "\n".join(srv.lines) and time.monotonic() < deadline:
            time.sleep(0.05)
        text = "\n".join(srv.lines)
        assert "WARNING: no public URL: the ngrok program cannot be downloaded" in text, text
        assert "keeps serving locally" in text and "open to anyone" in text
        assert requests.get(srv.url + "/health", timeout=10).status_code == 200
        ok = requests.post(srv.url + "/api/v1/predict", files={"image": ("a.png", sample_png)}, timeout=30)
        assert ok.status_code == 200
    finally:
        srv.process.terminate()
        assert srv.process.wait(timeout=20) == 0  # SIGTERM stops it cleanly (tunnels would close here)
    assert not srv.ready_path.exists()  # the ready signal goes with the server
    # python rest_api_flask/flask_app.py with the Flask development server (--debug, no reloader) and auth
    cmd = [sys.executable, str(FLASK_APP), "--model-dir", str(model_dir), "--upload-folder", str(tmp_path / "u2"),
           "--output-folder", str(tmp_path / "o2"), "--port", "0", "--debug", "--infer-with-cpu", "--auth", "demo:pw"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    try:
        url = None
        for line in proc.stdout:
            if line.startswith("Serving on http://"):
                url = line.split("Serving on ", 1)[1].strip()
                break
        assert url, "flask_app.py did not start"
        assert requests.get(url + "/health", timeout=10).status_code == 200
        assert requests.get(url + "/api/v1/model", timeout=10).status_code == 401
        assert requests.get(url + "/api/v1/model", auth=("demo", "pw"), timeout=10).json()["engine"] == "torchvision"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_no_authtoken_says_how_to_get_one_and_keeps_serving_locally(model_dir, tmp_path):
    srv = start_server(model_dir, tmp_path, tunnel="ngrok")  # start_server empties NGROK_AUTHTOKEN
    try:
        assert srv.info["tunnel_state"] == "failed" and srv.public_url is None
        assert "no ngrok authtoken" in srv.tunnel_error and "NGROK_AUTHTOKEN" in srv.tunnel_error
        deadline = time.monotonic() + 10
        # the warning, then "keeps serving locally" on a line of its own: wait for both
        while not any("keeps serving locally" in line for line in srv.lines) and time.monotonic() < deadline:
            time.sleep(0.1)
        text = "\n".join(srv.lines)
        assert "WARNING: no public URL: no ngrok authtoken" in text and "NGROK_AUTHTOKEN" in text, text
        assert "keeps serving locally" in text
        assert requests.get(srv.url + "/health", timeout=10).json()["model_loaded"] is True
    finally:
        srv.process.terminate()
        assert srv.process.wait(timeout=20) == 0


@pytest.mark.slow
def test_public_url_is_printed_and_the_tunnel_closes_on_exit(model_dir, tmp_path):
    # pyngrok runs for real; the ngrok program it starts is the stand-in agent (no ngrok service here)
    binary, log = fake_ngrok_binary(tmp_path, "ok")
    env = {"PYNGROK_NGROK_PATH": str(binary), "HOME": str(tmp_path), "NGROK_AUTHTOKEN": "tok-from-env"}
    srv = start_server(model_dir, tmp_path, "--auth", "demo:password1", tunnel="ngrok", env=env)
    try:
        assert srv.public_url == "https://fake-tunnel.ngrok-free.app" and srv.info["tunnel_state"] == "open", srv.info
        assert "Public URL: https://fake-tunnel.ngrok-free.app" in srv.lines, "\n".join(srv.lines)
        assert not any("open to anyone" in line for line in srv.lines)  # --auth was given
        calls = agent_log(log)
        assert "tok-from-env" in calls[0]["argv"]
        post = next(c for c in calls if "post" in c)  # pyngrok 9: a v3 endpoint, basic auth as a traffic policy
        assert "basic_auth" not in post["body"] and "demo:password1" in post["body"]["traffic_policy"]
        assert post["body"]["upstream"]["url"] == f"http://localhost:{srv.port}"
        assert requests.get(srv.url + "/api/v1/model", auth=("demo", "password1"), timeout=10).status_code == 200
    finally:
        srv.process.terminate()  # SIGTERM to the server alone: it closes its tunnel on the way out
        assert srv.process.wait(timeout=20) == 0
    assert any("delete" in c for c in agent_log(log))  # the tunnel was closed on exit


def test_cloudflared_that_cannot_open_is_one_line_and_the_server_serves_locally(model_dir, tmp_path,
                                                                                   fake_cloudflared):
    srv = start_server(model_dir, tmp_path, tunnel="cloudflared", env={"FAKE_CLOUDFLARED": "refused"})
    try:
        assert srv.info["tunnel_state"] == "failed" and srv.public_url is None
        assert srv.tunnel_error.startswith("cloudflared stopped (exit code 1) before the tunnel opened")
        deadline = time.monotonic() + 10
        while not any("keeps serving locally" in line for line in srv.lines) and time.monotonic() < deadline:
            time.sleep(0.1)
        warnings = [line for line in srv.lines if "public URL" in line or "cloudflared" in line]
        assert len(warnings) == 2, warnings  # "open to anyone" (no --auth) and why there is none
        assert warnings[1].startswith("WARNING: no public URL: cloudflared stopped") and "connection refused" in \
            warnings[1] and warnings[1].endswith("the server keeps serving locally.")
        assert requests.get(srv.url + "/health", timeout=10).json()["model_loaded"] is True
    finally:
        srv.process.terminate()
        assert srv.process.wait(timeout=20) == 0


def test_cloudflared_url_is_printed_with_what_it_is(model_dir, tmp_path, fake_cloudflared):
    import cloudflared_stand_in

    srv = start_server(model_dir, tmp_path, "--api-key", "k1", tunnel="cloudflared")
    try:
        assert srv.info["public_via"] == "cloudflared" and srv.public_url.endswith(".trycloudflare.com")
        deadline = time.monotonic() + 10
        while not any("no uptime promise" in line for line in srv.lines) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert f"Public URL: {srv.public_url}" in srv.lines
        assert any(line.startswith("It is a TryCloudflare quick tunnel: no account, no uptime promise") and
                   "anyone who has the link" in line for line in srv.lines), srv.lines
        opened = cloudflared_stand_in.notes(fake_cloudflared)[-1]
        through = requests.get(opened["forward"] + "/api/v1/model", headers={"X-API-Key": "k1"}, timeout=10)
        assert through.status_code == 200 and through.json()["engine"] == "torchvision"
        assert requests.get(opened["forward"] + "/api/v1/model", timeout=10).status_code == 401
    finally:
        srv.process.terminate()
        assert srv.process.wait(timeout=20) == 0
    started = cloudflared_stand_in.notes(fake_cloudflared)[0]
    assert not cloudflared_stand_in.alive(started["pid"])  # closed on the way out
