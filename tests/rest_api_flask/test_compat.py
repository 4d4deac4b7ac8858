"""The older detectron2 Flask API's routes: same payloads and response shape, minus its bugs."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_detect_area_base64_answers_the_old_shape_and_honours_the_threshold(client, predictor, sample_png, folders):
    image = np.array(Image.open(io.BytesIO(sample_png)).convert("RGB"))
    scores = predictor(image, threshold=0.0).scores
    cut = float(np.sort(scores)[len(scores) // 2])
    payload = {"threshold_value": cut, "image_string": _b64(sample_png),
               "input_image_name": "../../my_input.png", "output_image_name": "/tmp/my_output.png"}
    response = client.post("/api/detect-area-base64", json=payload)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["status_code"] == 200
    data = body["data"]
    expected = int((scores >= cut).sum())
    assert len(data["detected_bounding_boxes"]) == len(data["partial_images"]) == expected < len(scores)
    for k, (box, score) in enumerate(data["detected_bounding_boxes"]):
        assert len(box[f"box_{k}"]) == 4 and score[f"score_{k}"] >= cut - 1e-6
        crop = Image.open(io.BytesIO(base64.b64decode(data["partial_images"][k][f"partial_image_{k}"])))
        assert crop.format == "JPEG"
    drawn = Image.open(io.BytesIO(base64.b64decode(data["output_image"])))
    assert drawn.size == (image.shape[1], image.shape[0])
    # names were reduced to plain names inside the two folders
    upload, output = folders
    assert data["input_image_name"] == "my_input.png" and data["output_image_name"] == "my_output.png"
    assert (upload / "my_input.png").read_bytes() == sample_png
    assert (output / "my_output.png").read_bytes() == base64.b64decode(data["output_image"])
    assert sorted(p.name for p in output.glob("my_output_partial_*.jpg")) == [f"my_output_partial_{k}.jpg" for k in range(expected)]
    # the same output name again with fewer instances: no crop of the first answer is left behind
    again = client.post("/api/detect-area-base64", json={**payload, "threshold_value": 1.0}).get_json()
    assert again["data"]["partial_images"] == [] and not list(output.glob("my_output_partial_*.jpg"))


@pytest.mark.parametrize("missing", ["threshold_value", "image_string", "input_image_name", "output_image_name"])
def test_detect_area_base64_missing_fields_are_400(client, sample_png, missing):
    payload = {"threshold_value": 0.5, "image_string": _b64(sample_png), "input_image_name": "a.png",
               "output_image_name": "b.png"}
    del payload[missing]
    response = client.post("/api/detect-area-base64", json=payload)
    assert response.status_code == 400
    body = response.get_json()
    assert body["status_code"] == 400 and missing in body["data"] and body["error"] == body["data"]


def test_detect_area_base64_bad_values(client, sample_png):
    base = {"threshold_value": 0.5, "image_string": _b64(sample_png), "input_image_name": "a.png", "output_image_name": "b.png"}
    assert client.post("/api/detect-area-base64", json={**base, "threshold_value": "lots"}).status_code == 400
    assert client.post("/api/detect-area-base64", json={**base, "image_string": "%%%"}).status_code == 400
    assert client.post("/api/detect-area-base64", json={**base, "image_string": _b64(b"text")}).status_code == 415
    assert client.post("/api/detect-area-base64", json={**base, "input_image_name": "../.."}).status_code == 400
    assert client.post("/api/detect-area-base64", data="x", content_type="text/plain").status_code == 400


def test_detect_area_all_and_by_name(client, sample_paths, folders):
    upload, output = folders
    upload.mkdir(parents=True, exist_ok=True)
    assert client.post("/api/detect-area-all", json={"threshold_value": 0.0}).status_code == 404  # nothing there yet
    for path in sample_paths[:2]:
        (upload / path.name).write_bytes(path.read_bytes())
    (upload / "notes.txt").write_text("not an image")
    every = client.post("/api/detect-area-all", json={"threshold_value": 0.0}).get_json()
    assert every["status_code"] == 200 and sorted(every["data"]) == sorted(p.name for p in sample_paths[:2])
    one = sample_paths[0].name
    named = client.post("/api/detect-area-by-name", json={"image_names": [one], "threshold_value": 0.0}).get_json()
    assert list(named["data"]) == [one]
    repeated = client.post("/api/detect-area-by-name", json={"image_names": [one] * 1000, "threshold_value": 0.0})
    assert repeated.status_code == 200 and list(repeated.get_json()["data"]) == [one]  # each name runs once
    many = client.post("/api/detect-area-by-name", json={"image_names": [f"{i}.png" for i in range(17)]})
    assert many.status_code == 413 and "at most 16" in many.get_json()["data"]
    assert named["data"][one]["detected_bounding_boxes"] == every["data"][one]["detected_bounding_boxes"]
    assert (output / f"{sample_paths[0].stem}_output.png").is_file()
    assert client.post("/api/detect-area-all", json={}).status_code == 400
    assert client.post("/api/detect-area-by-name", json={}).status_code == 400
    missing = client.post("/api/detect-area-by-name", json={"image_names": ["nope.png"]})
    assert missing.status_code == 404 and "nope.png" in missing.get_json()["data"]
    # a path-like name is reduced to its plain name, so it can only ever name a file inside the upload folder
    (upload.parent / "outside.png").write_bytes(sample_paths[0].read_bytes())
    escaped = client.post("/api/detect-area-by-name", json={"image_names": ["../outside.png"]})
    assert escaped.status_code == 404
