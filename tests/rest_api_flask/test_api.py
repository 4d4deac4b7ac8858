"""The /api/v1 routes through Flask's test client: the JSON contract, the result files, bad input."""

from __future__ import annotations

import base64
import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from rest_api_flask.encoding import decode_rle

from server_helpers import png_of


def _predict(client, png, **query):
    return client.post("/api/v1/predict", query_string=query,
                       data={"image": (io.BytesIO(png), "../../etc/sample.png")}, content_type="multipart/form-data")


def test_predict_follows_the_contract_and_equals_the_predictor(client, predictor, sample_paths, sample_png):
    response = _predict(client, sample_png, polygons=1)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    image = np.array(Image.open(io.BytesIO(sample_png)).convert("RGB"))
    expected = predictor(image, threshold=0.0)
    assert len(body["id"]) == 32 and int(body["id"], 16) >= 0
    assert body["image"] == {"width": image.shape[1], "height": image.shape[0], "filename": "sample.png"}
    assert body["model"]["classes"] == predictor.class_names
    assert body["model"]["engine"] == "torchvision" and body["model"]["backbone"] == "mobilenetv2_fpnlite"
    assert body["threshold"] == 0.0 and body["timing_ms"]["model"] > 0
    assert body["timing_ms"]["total"] >= body["timing_ms"]["model"]
    assert body["num_instances"] == len(expected) == len(body["instances"]) > 0
    assert body["masked_fraction"] == pytest.approx(expected.masked_fraction(), abs=1e-6)
    # the app holds this very Predictor and runs it on one image per call: the same computation on the same
    # pixels, so row for row (a server process or a batch is compared as sets: tests/detections.py)
    for k, inst in enumerate(body["instances"]):
        assert inst["index"] == k and inst["class_name"] == predictor.class_names[inst["class_id"]]
        assert inst["score"] == pytest.approx(float(expected.scores[k]), abs=1e-5)
        np.testing.assert_allclose(inst["box"], expected.boxes[k], atol=0.01)
        mask = decode_rle(inst["mask_rle"])
        assert inst["mask_rle"]["size"] == [image.shape[0], image.shape[1]]
        assert np.array_equal(mask, expected.masks[k])
        assert inst["area"] == int(mask.sum())
        assert inst["area_fraction"] == pytest.approx(mask.mean(), abs=1e-6)
        assert isinstance(inst["polygons"], list)
        assert inst["links"]["mask"] == f"/api/v1/results/{body['id']}/instances/{k}/mask.png"
    assert body["links"] == {
        "overlay": f"/api/v1/results/{body['id']}/overlay.png",
        "masks_zip": f"/api/v1/results/{body['id']}/masks.zip",
        "result_json": f"/api/v1/results/{body['id']}/result.json",
        "coco_json": f"/api/v1/results/{body['id']}/coco_results.json",
        "labelme_json": f"/api/v1/results/{body['id']}/labelme.json",
    }


def test_result_files_match_the_json(client, sample_png, folders):
    body = _predict(client, sample_png).get_json()
    n, (height, width) = body["num_instances"], (body["image"]["height"], body["image"]["width"])
    overlay = client.get(body["links"]["overlay"])
    assert overlay.status_code == 200 and overlay.mimetype == "image/png"
    assert Image.open(io.BytesIO(overlay.data)).size == (width, height)
    archive = zipfile.ZipFile(io.BytesIO(client.get(body["links"]["masks_zip"]).data))
    names = archive.namelist()
    assert names[-1] == "union.png" and len(names) == n + 1
    union = np.zeros((height, width), dtype=bool)
    for inst, name in zip(body["instances"], names):
        assert name == f"instance_{inst['index']:03d}_{inst['class_name']}.png"
        png = np.array(Image.open(io.BytesIO(archive.read(name))))
        assert png.shape == (height, width) and set(np.unique(png)) <= {0, 255}
        mask = decode_rle(inst["mask_rle"])
        assert np.array_equal(png == 255, mask)
        assert np.array_equal(np.array(Image.open(io.BytesIO(client.get(inst["links"]["mask"]).data))) == 255, mask)
        crop = Image.open(io.BytesIO(client.get(inst["links"]["crop"]).data))
        assert crop.mode == "RGBA"
        union |= mask
    assert np.array_equal(np.array(Image.open(io.BytesIO(archive.read("union.png")))) == 255, union)
    assert union.mean() == pytest.approx(body["masked_fraction"], abs=1e-6)
    assert client.get(body["links"]["result_json"]).get_json() == body
    coco = client.get(body["links"]["coco_json"]).get_json()
    assert [c["category_id"] for c in coco] == [i["class_id"] + 1 for i in body["instances"]]
    _labelme_file_converts_back(client, body, folders)


def _labelme_file_converts_back(client, body, folders):
    """labelme.json: an attachment with the image embedded, one shape group per instance with a mask."""
    answer = client.get(body["links"]["labelme_json"])
    assert answer.status_code == 200 and "attachment" in answer.headers["Content-Disposition"]
    document = answer.get_json()
    assert (document["imageWidth"], document["imageHeight"]) == (body["image"]["width"], body["image"]["height"])
    embedded = Image.open(io.BytesIO(base64.b64decode(document["imageData"])))
    assert embedded.size == (body["image"]["width"], body["image"]["height"])
    described = {int(s["description"].split(",")[0].split()[1]) for s in document["shapes"]}
    masks = [decode_rle(inst["mask_rle"]) for inst in body["instances"]]
    assert described <= {k for k, m in enumerate(masks) if m.any()}  # no shape for an empty mask
    assert {k for k, m in enumerate(masks) if m.sum() >= 20} <= described  # a shape for every real one


def test_a_results_labelme_json_converts_back_to_its_instances(folders, tiny_coco, tmp_path):
    """The store's labelme.json of a result whose masks are real objects (the tiny data set's own), read back
    by the kit's labelme converter from the file alone."""
    from pycocotools import mask as mask_utils

    from maskrcnn_finetune.data.coco import load_coco
    from maskrcnn_finetune.data.convert import convert_labelme
    from maskrcnn_finetune.data.images import load_rgb
    from maskrcnn_finetune.structures import Instances
    from rest_api_flask.results import ResultStore

    coco = load_coco(tiny_coco["train"])
    image_info = coco.images[0]
    image = load_rgb(coco.image_path(image_info))
    anns = coco.annotations[image_info["id"]]
    h, w = image.shape[:2]
    masks = np.stack([mask_utils.decode(mask_utils.frPyObjects(a["segmentation"], h, w)).any(-1) for a in anns])
    instances = Instances((h, w), np.array([a["bbox"] for a in anns], np.float32), np.full(len(anns), 0.9, np.float32),
                          np.array([coco.label_of_category[a["category_id"]] - 1 for a in anns]), masks,
                          coco.class_names)
    store = ResultStore(folders[1], 60, folders[0])
    pending = store.begin()
    pending.write_files(image, instances)
    pending.commit({"id": pending.id, "image": {"filename": "shapes.png"}})
    path = store.path(pending.id, "labelme.json")
    folder = tmp_path / "corrected"
    folder.mkdir()
    (folder / "shapes.json").write_bytes(path.read_bytes())  # labelme opens it alone: the image is inside
    back = load_coco(convert_labelme(folder, tmp_path / "coco", val_fraction=0).json_paths["dataset"])
    got = back.annotations[back.images[0]["id"]]
    assert len(got) == len(anns) > 0
    for ann in got:  # each object comes back as one instance (the converter orders them its own way)
        drawn = mask_utils.decode(mask_utils.frPyObjects(ann["segmentation"], h, w)).any(-1)
        best = max((drawn & mask).sum() / (drawn | mask).sum() for mask in masks)
        assert best >= 0.9


def test_threshold_is_honoured_from_query_form_and_json(client, predictor, sample_png):
    scores = predictor(np.array(Image.open(io.BytesIO(sample_png)).convert("RGB")), threshold=0.0).scores
    cut = float(np.sort(scores)[len(scores) // 2])  # keeps the upper half of the instances
    expected = int((scores >= cut).sum())
    via_query = _predict(client, sample_png, threshold=cut).get_json()
    via_form = client.post("/api/v1/predict", data={"image": (io.BytesIO(sample_png), "a.png"), "threshold": str(cut)},
                           content_type="multipart/form-data").get_json()
    via_json = client.post("/api/v1/predict", json={"image_base64": base64.b64encode(sample_png).decode(),
                                                    "threshold": cut}).get_json()
    for body in (via_query, via_form, via_json):
        assert body["threshold"] == pytest.approx(cut)
        assert body["num_instances"] == expected < len(scores)
        assert all(inst["score"] >= cut - 1e-5 for inst in body["instances"])
    assert via_json["image"]["filename"] is None
    bad = client.post("/api/v1/predict?threshold=2", data={"image": (io.BytesIO(sample_png), "a.png")})
    assert bad.status_code == 400 and "between 0 and 1" in bad.get_json()["error"]
    word = client.post("/api/v1/predict?threshold=high", data={"image": (io.BytesIO(sample_png), "a.png")})
    assert word.status_code == 400 and "threshold" in word.get_json()["error"]


def test_polygons_only_on_request_and_they_cover_the_mask(client, sample_png):
    plain = _predict(client, sample_png).get_json()
    assert all("polygons" not in inst for inst in plain["instances"])
    body = _predict(client, sample_png, polygons=1).get_json()
    from PIL import ImageDraw
    for inst in body["instances"]:
        mask = decode_rle(inst["mask_rle"])
        if mask.sum() < 20:
            continue
        canvas = Image.new("L", (mask.shape[1], mask.shape[0]), 0)
        for poly in inst["polygons"]:
            ImageDraw.Draw(canvas).polygon(poly, fill=1)
        drawn = np.array(canvas, dtype=bool)
        iou = (drawn & mask).sum() / (drawn | mask).sum()
        assert iou > 0.6, iou


def test_batch_multipart_and_json_give_one_result_per_image(client, predictor, sample_paths):
    pngs = [png_of(np.array(Image.open(p).convert("RGB"))) for p in sample_paths[:3]]
    multi = client.post("/api/v1/predict/batch", data={"images": [(io.BytesIO(b), f"im{i}.png") for i, b in enumerate(pngs)]},
                        content_type="multipart/form-data")
    assert multi.status_code == 200, multi.get_json()
    results = multi.get_json()["results"]
    assert [r["image"]["filename"] for r in results] == ["im0.png", "im1.png", "im2.png"]
    assert len({r["id"] for r in results}) == 3
    for png, result in zip(pngs, results):
        expected = predictor(np.array(Image.open(io.BytesIO(png))), threshold=0.0)
        assert result["num_instances"] == len(expected)
        # one image per model call (no --micro-batch), this very Predictor: the same computation, row for row
        assert np.array_equal(decode_rle(result["instances"][0]["mask_rle"]), expected.masks[0])
    as_json = client.post("/api/v1/predict/batch", json=[{"image_base64": base64.b64encode(b).decode()} for b in pngs])
    assert [r["num_instances"] for r in as_json.get_json()["results"]] == [r["num_instances"] for r in results]
    broken = client.post("/api/v1/predict/batch", json=[{"image_base64": base64.b64encode(pngs[0]).decode()},
                                                        {"image_base64": base64.b64encode(b"not an image").decode()}])
    assert broken.status_code == 415 and "image 1" in broken.get_json()["error"]
    empty = client.post("/api/v1/predict/batch", json=[])
    assert empty.status_code == 400 and "non-empty list" in empty.get_json()["error"]


def test_model_and_health(client, predictor):
    model = client.get("/api/v1/model").get_json()
    assert model["classes"] == predictor.class_names and model["backbone"] == "mobilenetv2_fpnlite"
    assert model["engine"] == "torchvision" and model["device"] == "cpu"
    health = client.get("/health")
    assert health.status_code == 200 and health.get_json()["status"] == "ok" and health.get_json()["model_loaded"] is True
    # the OpenAPI document: validated, and checked against real answers, in test_openapi.py


@pytest.mark.parametrize("url", [
    "/api/v1/results/0123456789abcdef0123456789abcdef/overlay.png",   # well-formed but unknown
    "/api/v1/results/nothex/overlay.png",
    "/api/v1/results/..%2F..%2Fetc/passwd",
])
def test_unknown_result_ids_are_404_json(client, url):
    response = client.get(url)
    assert response.status_code == 404
    assert "error" in response.get_json()


def test_result_file_names_outside_the_list_are_404(client, sample_png, folders):
    body = _predict(client, sample_png).get_json()
    (folders[1] / "secret.txt").write_text("not for clients")
    for name in ("../../secret.txt", "..%2F..%2Fsecret.txt", "instances/99/mask.png", "result.json/..", "x.json"):
        response = client.get(f"/api/v1/results/{body['id']}/{name}")
        assert response.status_code == 404, name
        assert b"not for clients" not in response.data


def test_ids_are_unique_and_nothing_half_written_is_left(client, sample_png, folders):
    ids = {_predict(client, sample_png).get_json()["id"] for _ in range(4)}
    assert len(ids) == 4
    results = folders[1] / "results"
    assert sorted(p.name for p in results.iterdir()) == sorted(ids)  # no .tmp-* folders remain
    # nothing is written outside the two folders' own sub-folders
    assert sorted(p.name for p in folders[1].iterdir()) == ["results"]
    assert sorted(p.name for p in folders[0].iterdir()) == ["api"]


def test_old_results_are_removed_after_the_retention(predictor, folders, sample_png):
    import os
    import time

    from rest_api_flask import create_app

    # the store looks for expired results on each new result (here every time: interval 0)
    app = create_app({"PREDICTOR": predictor, "UPLOAD_FOLDER": str(folders[0]), "OUTPUT_FOLDER": str(folders[1]),
                      "THRESHOLD": 0.0, "WARMUP": False, "RETENTION_MINUTES": 1, "CLEANUP_INTERVAL_S": 0})
    client = app.test_client()
    old = _predict(client, sample_png).get_json()["id"]
    kept = _predict(client, sample_png).get_json()["id"]  # a recent result: the clean-up leaves it
    hour_ago = time.time() - 3600
    os.utime(folders[1] / "results" / old, (hour_ago, hour_ago))
    os.utime(folders[0] / "api" / f"{old}.png", (hour_ago, hour_ago))
    new = _predict(client, sample_png).get_json()["id"]
    assert client.get(f"/api/v1/results/{kept}/result.json").status_code == 200
    assert client.get(f"/api/v1/results/{old}/result.json").status_code == 404
    assert client.get(f"/api/v1/results/{new}/result.json").status_code == 200
    assert not (folders[0] / "api" / f"{old}.png").exists()


def test_expired_results_wait_for_the_cleanup_interval_and_go_at_the_next_start(predictor, folders, sample_png):
    import os
    import time

    from rest_api_flask import create_app

    config = {"PREDICTOR": predictor, "UPLOAD_FOLDER": str(folders[0]), "OUTPUT_FOLDER": str(folders[1]),
              "THRESHOLD": 0.0, "WARMUP": False, "RETENTION_MINUTES": 60, "CLEANUP_INTERVAL_S": 3600}
    client = create_app(config).test_client()  # the start looked for expired results a moment ago
    old = _predict(client, sample_png).get_json()["id"]
    two_hours_ago = time.time() - 7200
    os.utime(folders[1] / "results" / old, (two_hours_ago, two_hours_ago))
    os.utime(folders[0] / "api" / f"{old}.png", (two_hours_ago, two_hours_ago))
    new = _predict(client, sample_png).get_json()["id"]  # within the interval: no look, the old one stays
    assert client.get(f"/api/v1/results/{old}/result.json").status_code == 200
    restarted = create_app(config).test_client()  # a new start always looks
    assert restarted.get(f"/api/v1/results/{old}/result.json").status_code == 404
    assert not (folders[0] / "api" / f"{old}.png").exists()
    assert restarted.get(f"/api/v1/results/{new}/result.json").status_code == 200


def test_auth_and_api_key_protect_everything_but_health(predictor, folders, sample_png):
    from rest_api_flask import create_app

    app = create_app({"PREDICTOR": predictor, "UPLOAD_FOLDER": str(folders[0]), "OUTPUT_FOLDER": str(folders[1]),
                      "THRESHOLD": 0.0, "WARMUP": False, "AUTH": "demo:s3cret", "API_KEY": "key123"})
    client = app.test_client()
    assert client.get("/health").status_code == 200
    denied = client.get("/api/v1/model")
    assert denied.status_code == 401 and "--auth" in denied.get_json()["error"]
    assert denied.headers["WWW-Authenticate"].startswith("Basic")
    wrong = client.get("/api/v1/model", headers={"Authorization": "Basic " + base64.b64encode(b"demo:nope").decode()})
    assert wrong.status_code == 401
    good = {"Authorization": "Basic " + base64.b64encode(b"demo:s3cret").decode()}
    assert client.get("/api/v1/model", headers=good).status_code == 200
    assert client.get("/api/v1/model", headers={"X-API-Key": "key123"}).status_code == 200
    assert client.get("/api/v1/model", headers={"X-API-Key": "key12"}).status_code == 401
    body = client.post("/api/v1/predict", data={"image": (io.BytesIO(sample_png), "a.png")}, headers=good).get_json()
    assert client.get(body["links"]["overlay"]).status_code == 401
    assert client.get(body["links"]["overlay"], headers=good).status_code == 200


class _SlowPredictor:
    """The tiny model's Predictor, whose calls wait until the test lets them go (a busy model)."""

    def __init__(self, predictor) -> None:
        import threading

        self.predictor, self.entered, self.go = predictor, threading.Semaphore(0), threading.Event()

    def __call__(self, *args, **kwargs):
        self.entered.release()
        assert self.go.wait(60), "the test never let the model go"
        return self.predictor(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.predictor, name)


def test_a_full_queue_answers_429_and_the_waiting_request_still_succeeds(predictor, folders, sample_png):
    import threading

    from rest_api_flask import create_app

    slow = _SlowPredictor(predictor)
    app = create_app({"PREDICTOR": slow, "UPLOAD_FOLDER": str(folders[0]), "OUTPUT_FOLDER": str(folders[1]),
                      "THRESHOLD": 0.0, "WARMUP": False, "MAX_WAITING": 1})
    answers = []
    first = threading.Thread(target=lambda: answers.append(_predict(app.test_client(), sample_png)))
    try:
        first.start()
        assert slow.entered.acquire(timeout=30)  # the first request is in the model: the queue is full
        busy = _predict(app.test_client(), sample_png)
        assert busy.status_code == 429 and "retry" in busy.get_json()["error"], busy.get_json()
    finally:
        slow.go.set()
        first.join(30)
    assert [a.status_code for a in answers] == [200]
    again = _predict(app.test_client(), sample_png)  # the model is free again
    assert again.status_code == 200 and again.get_json()["num_instances"] == answers[0].get_json()["num_instances"]


def test_uncompressed_rle_gives_the_same_masks_as_plain_run_lengths(client, sample_png):
    from rest_api_flask.encoding import decode_rle, uncompressed_rle

    compressed = _predict(client, sample_png).get_json()
    plain = client.post("/api/v1/predict?rle=uncompressed", data={"image": (io.BytesIO(sample_png), "a.png")},
                        content_type="multipart/form-data").get_json()
    assert plain["num_instances"] == compressed["num_instances"] > 0
    for a, b in zip(compressed["instances"], plain["instances"]):
        assert isinstance(a["mask_rle"]["counts"], str) and isinstance(b["mask_rle"]["counts"], list)
        mask = decode_rle(a["mask_rle"])
        assert np.array_equal(decode_rle(b["mask_rle"]), mask) and sum(b["mask_rle"]["counts"]) == mask.size
        assert sum(b["mask_rle"]["counts"][1::2]) == a["area"]  # odd runs are the mask's pixels
    # a mask that starts in the first pixel begins with an empty background run
    corner = np.zeros((4, 3), bool)
    corner[0, 0] = corner[1, 0] = corner[3, 2] = True
    assert uncompressed_rle(corner) == {"size": [4, 3], "counts": [0, 2, 9, 1]}
    assert client.post("/api/v1/predict?rle=bits", data={"image": (io.BytesIO(sample_png), "a.png")},
                       content_type="multipart/form-data").status_code == 400


def test_remove_colors_draws_the_overlay_on_a_grey_image(predictor, folders, sample_png):
    from PIL import Image as PILImage

    from rest_api_flask import create_app
    from rest_api_flask.encoding import decode_rle

    def overlay(client, **query):
        body = _predict(client, sample_png, **query).get_json()
        masks = [decode_rle(i["mask_rle"]) for i in body["instances"]]
        drawn = np.array(PILImage.open(io.BytesIO(client.get(body["links"]["overlay"]).data)).convert("RGB"))
        return drawn, np.any(masks, axis=0) if masks else np.zeros(drawn.shape[:2], bool)

    image = np.array(PILImage.open(io.BytesIO(sample_png)).convert("RGB"))
    grey = np.array(PILImage.fromarray(image).convert("L"))
    config = {"PREDICTOR": predictor, "UPLOAD_FOLDER": str(folders[0]), "OUTPUT_FOLDER": str(folders[1]),
              "THRESHOLD": 0.0, "WARMUP": False}
    plain = create_app(config).test_client()
    colour, covered = overlay(plain)
    asked, _ = overlay(plain, remove_colors="1")
    # the pixels no mask, box or label touched: the photo's own in colour, its grey in the grey overlay
    untouched = np.all(colour == image, axis=-1) & ~covered
    assert covered.any() and untouched.sum() > 1000
    assert np.array_equal(asked[untouched], np.repeat(grey[untouched][:, None], 3, axis=1))
    assert not np.array_equal(asked[covered], np.repeat(grey[covered][:, None], 3, axis=1))  # masks keep colour

    # the server's --remove-colors makes it the default, a request's remove_colors=0 turns it off
    greyed = create_app({**config, "REMOVE_COLORS": True}).test_client()
    assert np.array_equal(overlay(greyed)[0], asked)
    assert np.array_equal(overlay(greyed, remove_colors="0")[0], colour)
    assert b'id="grey-image" type="checkbox" checked' in greyed.get("/").data
    assert b'id="grey-image" type="checkbox">' in plain.get("/").data


def test_cors_is_off_by_default_and_allows_only_the_given_origins(predictor, folders, app, sample_png):
    from rest_api_flask import create_app
    from rest_api_flask.config import ServeConfig

    plain = app.test_client().post("/api/v1/predict", headers={"Origin": "https://app.example.com"},
                                   data={"image": (io.BytesIO(sample_png), "a.png")}, content_type="multipart/form-data")
    assert plain.status_code == 200 and "Access-Control-Allow-Origin" not in plain.headers
    settings = ServeConfig.from_argv(["--model-dir", "m", "--cors-origin", "https://app.example.com",
                                      "--api-key", "k3y"]).app_config()
    assert settings["CORS_ORIGINS"] == ["https://app.example.com"]
    settings.update(MODEL_DIR=None, PREDICTOR=predictor, UPLOAD_FOLDER=str(folders[0]),
                    OUTPUT_FOLDER=str(folders[1]), WARMUP=False, THRESHOLD=0.0)
    client = create_app(settings).test_client()
    # the browser's preflight carries no key and is answered; the request itself needs the key
    preflight = client.options("/api/v1/predict", headers={
        "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "X-API-Key"})
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "x-api-key" in preflight.headers["Access-Control-Allow-Headers"].lower()
    without_key = client.post("/api/v1/predict", headers={"Origin": "https://app.example.com"},
                              data={"image": (io.BytesIO(sample_png), "a.png")}, content_type="multipart/form-data")
    assert without_key.status_code == 401 and without_key.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    answer = client.post("/api/v1/predict", headers={"Origin": "https://app.example.com", "X-API-Key": "k3y"},
                         data={"image": (io.BytesIO(sample_png), "a.png")}, content_type="multipart/form-data")
    assert answer.status_code == 200 and answer.get_json()["num_instances"] == len(answer.get_json()["instances"])
    assert answer.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    other = client.post("/api/v1/predict", headers={"Origin": "https://evil.example", "X-API-Key": "k3y"},
                        data={"image": (io.BytesIO(sample_png), "a.png")}, content_type="multipart/form-data")
    assert "Access-Control-Allow-Origin" not in other.headers
    assert client.options("/api/v1/predict", headers={"Origin": "https://evil.example",
                                                       "Access-Control-Request-Method": "POST"}
                          ).headers.get("Access-Control-Allow-Origin") is None
