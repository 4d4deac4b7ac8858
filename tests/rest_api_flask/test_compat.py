"""The older kits' routes: the detectron2 Flask API (``/api/...``) and the detectron2 web app (``/detect``).

The app-client tests pin each rule; the last tests replay the clients documented in the older kits'
READMEs (the detectron2 Flask API and web app, the torchvision tutorial's client) against the real
server process and check the old shapes, status codes and files on disk.
"""

from __future__ import annotations

import base64
import io
import os

import numpy as np
import pytest
import requests
from PIL import Image

from maskrcnn_finetune.visualize import draw_instances
from maskrcnn_finetune.errors import ConfigError
from rest_api_flask import create_app
from rest_api_flask.config import ServeConfig, check_config

from detections import assert_same_detections
from server_helpers import png_of, start_server, stop_server

OLD_ITEM_KEYS = ["input_image_name", "detected_bounding_boxes", "partial_images", "output_image"]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _rgb(data: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(data)).convert("RGB"))


def _copy_samples(sample_paths, upload, names):
    upload.mkdir(parents=True, exist_ok=True)
    for path, name in zip(sample_paths, names):
        (upload / name).write_bytes(path.read_bytes())


@pytest.fixture
def app_with(predictor, folders):
    """An app with the test fixture's settings plus the given overrides."""
    def make(**overrides):
        upload, output = folders
        return create_app({"PREDICTOR": predictor, "UPLOAD_FOLDER": str(upload), "OUTPUT_FOLDER": str(output),
                           "THRESHOLD": 0.0, "WARMUP": False, "TESTING": True, **overrides})
    return make


# ---------------------------------------------------------------- POST /api/detect-area-base64
def test_detect_area_base64_answers_the_old_shape_and_honours_the_threshold(client, predictor, sample_png, folders):
    image = _rgb(sample_png)
    scores = predictor(image, threshold=0.0).scores
    cut = float(np.sort(scores)[len(scores) // 2])
    payload = {"threshold_value": cut, "image_string": _b64(sample_png),
               "input_image_name": "../../my input.png", "output_image_name": "/tmp/my output.png"}
    response = client.post("/api/detect-area-base64", json=payload)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["status_code"] == 200
    data = body["data"]
    assert list(data)[:3] == ["detected_bounding_boxes", "partial_images", "output_image"]  # the old keys, first
    expected = int((scores >= cut).sum())
    assert len(data["detected_bounding_boxes"]) == len(data["partial_images"]) == expected < len(scores)
    for k, (box, score) in enumerate(data["detected_bounding_boxes"]):
        assert len(box[f"box_{k}"]) == 4 and score[f"score_{k}"] >= cut - 1e-6
        crop = Image.open(io.BytesIO(base64.b64decode(data["partial_images"][k][f"partial_image_{k}"])))
        assert crop.format == "JPEG"
    # the drawn image is the kit's drawing of the same instances, pixel for pixel (PNG, scale 1)
    drawn = _rgb(base64.b64decode(data["output_image"]))
    assert np.array_equal(drawn, draw_instances(image, predictor(image, threshold=cut)))
    # names keep their spaces and are reduced to plain names inside the two folders
    upload, output = folders
    assert data["input_image_name"] == "my input.png" and data["output_image_name"] == "my output.png"
    assert (upload / "my input.png").read_bytes() == sample_png
    assert (output / "my output.png").read_bytes() == base64.b64decode(data["output_image"])
    crops = [f"OUTPUT_PARTIAL_IMAGE_my output_{k}.jpg" for k in range(expected)]
    assert sorted(p.name for p in output.glob("OUTPUT_PARTIAL_IMAGE_*.jpg")) == crops
    assert (output / crops[0]).read_bytes() == base64.b64decode(data["partial_images"][0]["partial_image_0"])
    assert not list(upload.parent.glob("*.png"))  # nothing was written beside the folders
    # the same output name again with fewer instances: no crop of the first answer is left behind
    again = client.post("/api/detect-area-base64", json={**payload, "threshold_value": 1.0}).get_json()
    assert again["data"]["partial_images"] == [] and not list(output.glob("OUTPUT_PARTIAL_IMAGE_*.jpg"))


@pytest.mark.parametrize("missing", ["threshold_value", "image_string", "input_image_name", "output_image_name"])
def test_detect_area_base64_missing_fields_are_400(client, sample_png, missing):
    payload = {"threshold_value": 0.5, "image_string": _b64(sample_png), "input_image_name": "a.png",
               "output_image_name": "b.png"}
    del payload[missing]
    response = client.post("/api/detect-area-base64", json=payload)
    assert response.status_code == 400
    body = response.get_json()
    assert body["status_code"] == 400 and missing in body["data"] and body["error"] == body["data"]


def test_detect_area_base64_bad_values(client, sample_png, folders):
    base = {"threshold_value": 0.5, "image_string": _b64(sample_png), "input_image_name": "a.png", "output_image_name": "b.png"}
    assert client.post("/api/detect-area-base64", json={**base, "threshold_value": "lots"}).status_code == 400
    assert client.post("/api/detect-area-base64", json={**base, "image_string": "%%%"}).status_code == 400
    assert client.post("/api/detect-area-base64", json={**base, "image_string": _b64(b"text")}).status_code == 415
    for name in ("../..", ".hidden.png", "a\x00b.png", "x" * 300 + ".png"):
        refused = client.post("/api/detect-area-base64", json={**base, "input_image_name": name})
        assert refused.status_code == 400 and "plain name" in refused.get_json()["data"], name
    assert client.post("/api/detect-area-base64", data="x", content_type="text/plain").status_code == 400
    written = [p for folder in folders for p in folder.rglob("*") if p.is_file()]
    assert written == []  # a refused request writes nothing


def test_base64_copies_and_the_old_scale_when_asked(app_with, predictor, sample_png, tmp_path, folders):
    client = app_with(LEGACY_BASE64_FOLDER=str(tmp_path / "string_images"), LEGACY_OUTPUT_SCALE=0.7).test_client()
    payload = {"threshold_value": 0.0, "image_string": _b64(sample_png), "input_image_name": "in.png",
               "output_image_name": "out.jpg"}
    data = client.post("/api/detect-area-base64", json=payload).get_json()["data"]
    height, width = _rgb(sample_png).shape[:2]
    out = Image.open(folders[1] / "out.jpg")
    assert out.format == "JPEG" and out.size == (int(width * 0.7 + 1e-2), int(height * 0.7 + 1e-2))
    strings = tmp_path / "string_images"
    assert (strings / "OUTPUT_BASE.txt").read_text() == data["output_image"]
    count = len(data["partial_images"])
    assert count > 0 and sorted(p.name for p in strings.glob("OUTPUT_PARTIAL_IMAGE_BASE_*.txt")) == \
        sorted(f"OUTPUT_PARTIAL_IMAGE_BASE_out_{k}.txt" for k in range(count))
    assert (strings / "OUTPUT_PARTIAL_IMAGE_BASE_out_0.txt").read_text() == data["partial_images"][0]["partial_image_0"]


# ---------------------------------------------------------------- detect-area-all and detect-area-by-name
def test_detect_area_all_and_by_name_answer_the_old_list(client, predictor, sample_paths, folders):
    upload, output = folders
    upload.mkdir(parents=True, exist_ok=True)
    empty = client.post("/api/detect-area-all", json={"threshold_value": 0.0})
    assert empty.status_code == 200 and empty.get_json() == {"data": {"message": "no input files"}, "status_code": 200}
    names = ["a.png", "my photo.png"]
    _copy_samples(sample_paths, upload, names)
    (upload / "notes.txt").write_text("not an image")
    (upload / "api").mkdir(exist_ok=True)  # the JSON API's own uploads live in a sub-folder, which is not read
    (upload / "api" / "sub.png").write_bytes(sample_paths[0].read_bytes())
    every = client.post("/api/detect-area-all", json={"threshold_value": 0.0}).get_json()
    assert every["status_code"] == 200 and isinstance(every["data"], list)
    assert [item["input_image_name"] for item in every["data"]] == names
    for item, path in zip(every["data"], sample_paths):
        assert list(item)[:4] == OLD_ITEM_KEYS
        expected = predictor(_rgb(path.read_bytes()), threshold=0.0)
        assert len(item["detected_bounding_boxes"]) == len(item["partial_images"]) == len(expected)
        # the drawn image under the input's own name, the crops under the old names
        assert (output / item["input_image_name"]).read_bytes() == base64.b64decode(item["output_image"])
        stem = item["input_image_name"].rsplit(".", 1)[0]
        assert len(list(output.glob(f"OUTPUT_PARTIAL_IMAGE_{stem}_*.jpg"))) == len(expected)
    # by name, as the file is in the folder (a space is not rewritten); threshold_value optional
    named = client.post("/api/detect-area-by-name", json={"image_names": ["my photo.png"]}).get_json()
    assert named["status_code"] == 200 and [item["input_image_name"] for item in named["data"]] == ["my photo.png"]
    assert named["data"][0]["detected_bounding_boxes"] == every["data"][1]["detected_bounding_boxes"]
    repeated = client.post("/api/detect-area-by-name", json={"image_names": ["a.png"] * 1000}).get_json()
    assert [item["input_image_name"] for item in repeated["data"]] == ["a.png"]  # each name runs once
    missing = client.post("/api/detect-area-by-name", json={"image_names": ["a.png", "nope.png"]})
    assert missing.status_code == 200
    assert missing.get_json() == {"data": {"message": "no such image nope.png"}, "status_code": 200}
    assert client.post("/api/detect-area-all", json={}).status_code == 400
    assert client.post("/api/detect-area-by-name", json={}).status_code == 400
    assert client.post("/api/detect-area-by-name", json={"image_names": [3]}).status_code == 400


def test_names_never_leave_the_upload_folder(client, sample_paths, folders, tmp_path):
    upload, output = folders
    _copy_samples(sample_paths, upload, ["in.png"])
    secret = tmp_path / "outside.png"
    secret.write_bytes(sample_paths[1].read_bytes())
    (upload / "link.png").symlink_to(secret)
    (upload / "inner.png").symlink_to(upload / "in.png")  # a link that stays inside is fine
    for name in ("../outside.png", str(secret), "sub/in.png", "..\\outside.png", "..", ""):
        refused = client.post("/api/detect-area-by-name", json={"image_names": [name]})
        assert refused.status_code == 400 and refused.get_json()["status_code"] == 400, name
    linked = client.post("/api/detect-area-by-name", json={"image_names": ["link.png"]})
    assert linked.status_code == 400 and "outside the upload folder" in linked.get_json()["data"]
    inner = client.post("/api/detect-area-by-name", json={"image_names": ["inner.png"]})
    assert inner.status_code == 200 and inner.get_json()["data"][0]["input_image_name"] == "inner.png"
    every = client.post("/api/detect-area-all", json={"threshold_value": 0.0}).get_json()
    assert [item["input_image_name"] for item in every["data"]] == ["in.png", "inner.png"]  # the link out is skipped
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs", "outside.png", "uploads"]


def test_a_large_folder_runs_in_groups_and_a_bad_file_does_not_stop_it(app_with, sample_paths, folders):
    upload, output = folders
    client = app_with(MAX_BATCH=2).test_client()
    names = [f"{k:02d}.png" for k in range(5)]
    _copy_samples([sample_paths[k % len(sample_paths)] for k in range(5)], upload, names)
    (upload / "broken.png").write_bytes(b"not a png")
    (output / "03.png").mkdir(parents=True)  # its output image cannot be written
    response = client.post("/api/detect-area-all", json={"threshold_value": 0.0})
    assert response.status_code == 200
    items = response.get_json()["data"]
    assert [item["input_image_name"] for item in items] == ["00.png", "01.png", "02.png", "03.png", "04.png", "broken.png"]
    done = [items[k] for k in (0, 1, 2, 4)]
    assert all(item["output_image"] for item in done) and all("error" not in item for item in done)
    assert items[3]["output_image"] == "" and "cannot write the output files of '03.png'" in items[3]["error"]
    broken = items[5]
    assert list(broken)[:4] == OLD_ITEM_KEYS and broken["detected_bounding_boxes"] == [] and broken["output_image"] == ""
    assert "broken.png" in broken["error"] and "remove or replace it" in broken["error"]
    assert not (output / "broken.png").exists()
    # more names than --max-batch are answered too (no 413)
    named = client.post("/api/detect-area-by-name", json={"image_names": names}).get_json()
    assert [item["input_image_name"] for item in named["data"]] == names


def test_the_same_upload_and_output_folder_is_refused(predictor, tmp_path, sample_paths):
    client = create_app({"PREDICTOR": predictor, "UPLOAD_FOLDER": str(tmp_path), "OUTPUT_FOLDER": str(tmp_path),
                         "WARMUP": False}).test_client()
    _copy_samples(sample_paths, tmp_path, ["a.png"])
    refused = client.post("/api/detect-area-all", json={"threshold_value": 0.0})
    assert refused.status_code == 409 and "--output-folder" in refused.get_json()["data"]
    assert (tmp_path / "a.png").read_bytes() == sample_paths[0].read_bytes()


def test_get_api_is_a_liveness_page(client):
    page = client.get("/api")
    assert page.status_code == 200 and "text/html" in page.content_type
    assert "The Flask App has been started" in page.get_data(as_text=True)


# ---------------------------------------------------------------- the detectron2 web app's /detect
def test_detect_draws_an_uploaded_file(client, predictor, sample_png):
    image = _rgb(sample_png)
    response = client.post("/detect", data={"file": (io.BytesIO(sample_png), "photo.png")})
    assert response.status_code == 200 and response.mimetype == "image/jpeg"
    assert int(response.headers["X-Instances"]) > 0
    # the kit's drawing of the instances at the server's threshold, as a quality-95 JPEG (as OpenCV writes them)
    expected = draw_instances(image, predictor(image, threshold=0.0))
    assert np.array_equal(_rgb(response.data), _rgb(png_of(expected, "JPEG", quality=95)))


def test_detect_fetches_a_url_with_the_kits_url_rules(app_with, client, http_server, predictor, sample_png):
    url = http_server.serve("/pic.png", sample_png)
    fetching = app_with(URL_ALLOW_LOOPBACK=True).test_client()
    response = fetching.get("/detect", query_string={"url": url, "threshold": "1.0"})
    assert response.status_code == 200 and response.mimetype == "image/jpeg"
    assert response.headers["X-Instances"] == "0"  # ?threshold= is honoured
    assert np.array_equal(_rgb(response.data), _rgb(png_of(_rgb(sample_png), "JPEG", quality=95)))  # nothing drawn
    # by default, loopback (and private, link-local) addresses are refused before any connection
    before = http_server.count("/pic.png")
    refused = client.get("/detect", query_string={"url": url})
    assert refused.status_code == 400 and "loopback" in refused.get_json()["error"]
    assert http_server.count("/pic.png") == before
    assert client.get("/detect", query_string={"url": "file:///etc/passwd"}).status_code == 400


def test_detect_bad_input_names_the_fix(client):
    assert "'file'" in client.post("/detect", data={"image": (io.BytesIO(b"x"), "a.png")}).get_json()["error"]
    assert "?url=" in client.get("/detect").get_json()["error"]
    assert client.post("/detect", data={"file": (io.BytesIO(b"text"), "a.png")}).status_code == 415
    # the old app's HTML form gets a page, as the old failure.html
    page = client.get("/detect", headers={"Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"})
    assert page.status_code == 400 and page.mimetype == "text/html"
    assert "Error in retrieving image" in page.get_data(as_text=True)


@pytest.mark.parametrize("flags, words", [
    (["--max-batch", "0"], "--max-batch must be positive"),
    (["--legacy-output-scale", "0"], "--legacy-output-scale must be above 0 and at most 1"),
    (["--legacy-output-scale", "1.5"], "--legacy-output-scale must be above 0 and at most 1"),
])
def test_legacy_flags_are_checked(model_dir, flags, words):
    with pytest.raises(ConfigError, match=words):
        check_config(ServeConfig.from_argv(["--model-dir", str(model_dir), *flags]))


def test_an_unwritable_base64_folder_is_refused_at_start(app_with, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="cannot create the --legacy-base64-folder"):
        app_with(LEGACY_BASE64_FOLDER=str(tmp_path / "file" / "strings"))


# ---------------------------------------------------------------- the old READMEs' clients, against the real server
@pytest.fixture(scope="module")
def legacy_server(model_dir, tmp_path_factory):
    """The real server with the older kits' flags: base64 copies, the old 0.7 scale, groups of 2 images."""
    root = tmp_path_factory.mktemp("legacy")
    srv = start_server(model_dir, root, "--threshold", "0", "--max-batch", "2",
                       "--legacy-base64-folder", str(root / "string_images"), "--legacy-output-scale", "0.7")
    yield srv, root / "string_images"
    stop_server(srv)


def test_the_detectron2_flask_api_readme_replayed(legacy_server, sample_paths, sample_png):
    srv, strings = legacy_server
    api = srv.url + "/api"
    assert "The Flask App has been started" in requests.get(api, timeout=10).text
    # an empty folder, then the README's detect-area-base64 example (threshold 0: the tiny model scores low)
    empty = requests.post(api + "/detect-area-all", json={"threshold_value": 0.5}, timeout=30)
    assert (empty.status_code, empty.json()) == (200, {"data": {"message": "no input files"}, "status_code": 200})
    payload = {"input_image_name": "my_input_image.png", "output_image_name": "my_output_image.png",
               "threshold_value": 0.0, "image_string": _b64(sample_png)}
    r = requests.post(api + "/detect-area-base64", json=payload, timeout=60)
    assert r.status_code == 200 and r.json()["status_code"] == 200
    data = r.json()["data"]
    count = len(data["detected_bounding_boxes"])
    assert count > 0 and [list(p) for p in data["partial_images"]] == [[f"partial_image_{k}"] for k in range(count)]
    assert (srv.upload_folder / "my_input_image.png").read_bytes() == sample_png
    out = Image.open(srv.output_folder / "my_output_image.png")
    height, width = _rgb(sample_png).shape[:2]
    assert out.size == (int(width * 0.7 + 1e-2), int(height * 0.7 + 1e-2))
    assert sorted(p.name for p in srv.output_folder.glob("OUTPUT_PARTIAL_IMAGE_*.jpg")) == \
        sorted(f"OUTPUT_PARTIAL_IMAGE_my_output_image_{k}.jpg" for k in range(count))
    assert (strings / "OUTPUT_BASE.txt").read_text() == data["output_image"]
    assert len(list(strings.glob("OUTPUT_PARTIAL_IMAGE_BASE_my_output_image_*.txt"))) == count
    # more base64 calls than --max-batch write into the same folder; detect-area-all still answers them all
    for k in range(3):
        more = requests.post(api + "/detect-area-base64", timeout=60, json={
            **payload, "input_image_name": f"call {k}.png", "output_image_name": f"out {k}.png",
            "image_string": _b64(png_of(np.roll(_rgb(sample_png), k, axis=1)))})
        assert more.status_code == 200
    for path in sample_paths[:2]:
        (srv.upload_folder / path.name).write_bytes(path.read_bytes())
    r = requests.post(api + "/detect-area-all", json={"threshold_value": 0.0}, timeout=120)
    assert r.status_code == 200 and r.json()["status_code"] == 200
    expected = sorted(["my_input_image.png", "call 0.png", "call 1.png", "call 2.png"] + [p.name for p in sample_paths[:2]])
    for item in r.json()["data"]:  # the old clients' loop
        assert list(item)[:4] == OLD_ITEM_KEYS
        name = item["input_image_name"]
        assert (srv.output_folder / name).read_bytes() == base64.b64decode(item["output_image"])
        stem = os.path.splitext(name)[0]
        assert (strings / f"OUTPUT_BASE_{stem}.txt").read_text() == item["output_image"]
        assert len(list(srv.output_folder.glob(f"OUTPUT_PARTIAL_IMAGE_{stem}_*.jpg"))) == len(item["partial_images"])
    assert sorted(item["input_image_name"] for item in r.json()["data"]) == expected
    # detect-area-by-name with the README's payload (image_names only), then an unknown name
    r = requests.post(api + "/detect-area-by-name", json={"image_names": ["call 1.png", sample_paths[0].name]}, timeout=60)
    assert r.status_code == 200 and [item["input_image_name"] for item in r.json()["data"]] == ["call 1.png", sample_paths[0].name]
    r = requests.post(api + "/detect-area-by-name", json={"image_names": ["gone.png"], "threshold_value": 0.5}, timeout=30)
    assert (r.status_code, r.json()) == (200, {"data": {"message": "no such image gone.png"}, "status_code": 200})
    r = requests.post(api + "/detect-area-by-name", json={"image_names": ["../my_input_image.png"]}, timeout=30)
    assert r.status_code == 400 and "plain file names" in r.json()["data"]


def test_the_detectron2_web_app_form_replayed(legacy_server, sample_png, http_server):
    srv, _ = legacy_server
    # <form action="/detect" method="POST" enctype="multipart/form-data"><input type="file" name="file">
    r = requests.post(srv.url + "/detect", files={"file": ("photo.png", sample_png)}, data={"submit": "Submit"}, timeout=60)
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/jpeg"
    drawn = _rgb(r.content)
    assert drawn.shape == _rgb(sample_png).shape and np.abs(drawn.astype(int) - _rgb(sample_png)).mean() > 3
    # <form action="/detect" method="GET"><input name="url">: the kit's URL rules, so no loopback address
    url = http_server.serve("/pic.png", sample_png)
    r = requests.get(srv.url + "/detect", params={"url": url}, timeout=30)
    assert r.status_code == 400 and "loopback" in r.json()["error"] and http_server.count("/pic.png") == 0


def test_the_torchvision_tutorials_client_replayed(legacy_server, predictor, sample_paths):
    """The torchvision detection tutorial's client (seed 004): an image file as a base64 string, its
    arrays rebuilt from the answer as the README's 'Coming from' section shows."""
    srv, _ = legacy_server
    path = sample_paths[0]
    with open(path, "rb") as image:  # convert_image_to_bytearray(image.read())
        image_data = base64.b64encode(image.read()).decode("utf-8")
    answer = requests.post(srv.url + "/api/v1/predict", json={"image_base64": image_data}, params={"threshold": 0.0},
                           timeout=60)
    assert answer.status_code == 200
    answer = answer.json()
    boxes = np.array([i["box"] for i in answer["instances"]], dtype=np.float32).reshape(-1, 4)
    labels = np.array([i["class_id"] + 1 for i in answer["instances"]], dtype=np.int64)
    scores = np.array([i["score"] for i in answer["instances"]], dtype=np.float32)
    want = predictor(np.array(Image.open(path).convert("RGB")), threshold=0.0)
    assert len(boxes) == len(labels) == len(scores) == len(want) > 0 and labels.min() >= 1
    # the server process against this process's Predictor: as sets (tied scores come out in either order)
    assert_same_detections({"boxes": boxes, "scores": scores, "labels": labels},
                           {"boxes": want.boxes, "scores": want.scores, "labels": want.class_ids + 1},
                           score_atol=1e-4, box_atol=0.01)
