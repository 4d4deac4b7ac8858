"""The JSON API, versioned under ``/api/v1``, plus ``/health`` and ``/openapi.json``.

    curl -F image=@photo.jpg 'http://127.0.0.1:5000/api/v1/predict?threshold=0.5'
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from flask import Blueprint, current_app, jsonify, request, send_file
from werkzeug.datastructures import FileStorage

from maskrcnn_finetune.cli import is_true
from maskrcnn_finetune.data.images import IMAGE_SUFFIXES
from maskrcnn_finetune.structures import Instances
from rest_api_flask.encoding import RLE_FORMATS, instances_json, mask_rles
from rest_api_flask.errors import ApiError
from rest_api_flask.inference import get_service
from rest_api_flask.inputs import clean_filename, decode_base64, decode_image, fetch_url, parse_threshold
from rest_api_flask.openapi import openapi_spec
from rest_api_flask.results import get_store

bp = Blueprint("api", __name__, url_prefix="/api/v1")
meta_bp = Blueprint("meta", __name__)


# ---------------------------------------------------------------- request parsing
def _json_body():
    body = request.get_json(silent=True)
    if body is None:
        raise ApiError("the request body is not valid JSON; send {\"image_base64\": \"...\"} or {\"url\": \"...\"}", 400)
    return body


def request_param(name: str, body=None):
    """A parameter from the JSON body, the form, or the query string (first found)."""
    if isinstance(body, dict) and body.get(name) is not None:
        return body[name]
    if name in request.form:
        return request.form[name]
    return request.args.get(name)


def _from_json_item(item, where: str) -> tuple[bytes, str | None]:
    if not isinstance(item, dict):
        raise ApiError(f"{where} must be a JSON object with 'image_base64' or 'url'", 400)
    if item.get("image_base64") is not None:
        return decode_base64(item["image_base64"]), clean_filename(item.get("filename"))
    if item.get("url") is not None:
        config = current_app.config
        data = fetch_url(item["url"], max_bytes=int(config["URL_MAX_MB"] * 2**20), timeout=config["URL_TIMEOUT_S"],
                         allow_loopback=config["URL_ALLOW_LOOPBACK"])
        return data, clean_filename(str(item["url"]).split("?", 1)[0])
    keys = ", ".join(repr(k) for k in item) or "none"
    raise ApiError(f"{where} has no 'image_base64' or 'url' field (fields sent: {keys}); send the image as "
                   "base64 in 'image_base64', the address of an image in 'url', or a multipart file 'image'", 400)


def _from_file(storage: FileStorage) -> tuple[bytes, str | None]:
    return storage.read(), clean_filename(storage.filename)


def _check_count(count: int, batch: bool) -> None:
    """Refuses more images than the route takes, before any of them is decoded or fetched."""
    if not batch and count > 1:
        raise ApiError(f"{count} images were sent to /api/v1/predict, which takes one; send several to "
                       "/api/v1/predict/batch (multipart field 'images')", 400)
    limit = current_app.config["MAX_BATCH"]
    if count > limit:
        raise ApiError(f"a batch holds at most {limit} images, got {count}; split it into several requests", 413)


def read_images(batch: bool) -> tuple[list[tuple[bytes, str | None]], dict | None]:
    """The images of a request as ``[(bytes, clean file name or None)]`` and the JSON body (if any).

    Raises:
        ApiError: 400 for an empty body, wrong fields or bad JSON; 415 for another content type.
    """
    if request.mimetype == "multipart/form-data":
        fields = ("images", "image") if batch else ("image",)
        files = [f for field in fields for f in request.files.getlist(field)]
        if not files:
            sent = ", ".join(repr(k) for k in list(request.files) + list(request.form)) or "none"
            raise ApiError(f"no file in the multipart field '{fields[0]}' (fields sent: {sent}); "
                           f"send the image as a file field named '{fields[0]}'", 400)
        _check_count(len(files), batch)
        return [_from_file(f) for f in files], None
    if request.is_json:
        body = _json_body()
        if not batch:
            return [_from_json_item(body, "the JSON body")], body
        items = body.get("images") if isinstance(body, dict) else body
        if not isinstance(items, list) or not items:
            raise ApiError("a batch JSON body must be a non-empty list of {\"image_base64\": ...} or "
                           "{\"url\": ...} objects (or {\"images\": [...]})", 400)
        _check_count(len(items), batch)  # before any URL is fetched
        return [_from_json_item(item, f"image {i}") for i, item in enumerate(items)], body if isinstance(body, dict) else None
    if not request.get_data(cache=True):
        raise ApiError("the request is empty; send multipart/form-data with a file field 'image', or JSON "
                       "{\"image_base64\": \"...\"} or {\"url\": \"...\"}", 400)
    raise ApiError(f"unsupported Content-Type {request.mimetype or 'none'!r}; send multipart/form-data with a file "
                   "field 'image', or application/json with 'image_base64' or 'url'", 415)


# ---------------------------------------------------------------- prediction
def store_result(image: np.ndarray, instances: Instances, raw: bytes, filename: str | None, threshold: float,
                 model_ms: float, start: float, polygons: bool, rle_format: str = "compressed",
                 remove_colors: bool = False) -> dict:
    """Writes a result's files and returns its JSON (the API's contract; also saved as ``result.json``)."""
    store = get_store()
    pending = store.begin()
    try:
        # each mask is encoded once, for the response and for coco_results.json; the union once too
        rles = mask_rles(instances)
        union = instances.union_mask()
        pending.write_files(image, instances, rles=rles, union=union, remove_colors=remove_colors)
        height, width = instances.image_size
        model = get_service().model_info()
        payload = {
            "id": pending.id,
            "image": {"width": int(width), "height": int(height), "filename": filename},
            "model": {"engine": model["engine"], "backbone": model["backbone"], "classes": model["classes"]},
            "threshold": threshold,
            "timing_ms": {"model": round(model_ms, 1), "total": None},  # filled in below, once all is done
            "masked_fraction": round(float(union.mean()), 6),
            "num_instances": len(instances),
            "instances": instances_json(instances, pending.id, polygons=polygons, rles=rles, rle_format=rle_format),
            "links": {
                "overlay": f"/api/v1/results/{pending.id}/overlay.png",
                "masks_zip": f"/api/v1/results/{pending.id}/masks.zip",
                "result_json": f"/api/v1/results/{pending.id}/result.json",
                "coco_json": f"/api/v1/results/{pending.id}/coco_results.json",
                "labelme_json": f"/api/v1/results/{pending.id}/labelme.json",
            },
        }
        payload["timing_ms"]["total"] = round((time.perf_counter() - start) * 1000, 1)
        pending.commit(payload)
    except BaseException:
        pending.discard()
        raise
    suffix = Path(filename).suffix.lower() if filename else ""
    store.save_upload(pending.id, raw, suffix if suffix in IMAGE_SUFFIXES else ".img")
    return payload


def predict_many(items: list[tuple[bytes, str | None]], threshold: float, polygons: bool, rle_format: str,
                 remove_colors: bool, start: float) -> list[dict]:
    """Decodes, predicts and stores images one after the other, so only one decoded image is held at a time."""
    max_pixels = current_app.config["MAX_PIXELS"]
    payloads = []
    for i, (data, name) in enumerate(items):
        what = (f"image {i}" + (f" ({name!r})" if name else "")) if len(items) > 1 else "the image"
        image = decode_image(data, max_pixels, what=what)
        (instances,), model_ms = get_service().predict([image], threshold)
        payloads.append(store_result(image, instances, data, name, threshold, model_ms, start, polygons, rle_format,
                                     remove_colors))
    return payloads


def _options(body) -> tuple[float, bool, str, bool]:
    """``(threshold, polygons, rle, remove_colors)`` of a predict request, from the query, the form or the JSON
    body (``remove_colors`` defaults to the server's ``--remove-colors``)."""
    threshold = parse_threshold(request_param("threshold", body), current_app.config["THRESHOLD"])
    rle_format = request_param("rle", body) or "compressed"
    if rle_format not in RLE_FORMATS:
        raise ApiError(f"rle must be {' or '.join(RLE_FORMATS)}, got {str(rle_format)[:40]!r}; leave it out for "
                       "COCO's compressed counts", 400)
    grey = request_param("remove_colors", body)
    remove_colors = current_app.config["REMOVE_COLORS"] if grey is None else is_true(grey)
    return threshold, is_true(request_param("polygons", body)), rle_format, remove_colors


@bp.post("/predict")
def predict():
    """One image -> instances with masks, and links to the result's files."""
    start = time.perf_counter()
    items, body = read_images(batch=False)
    return jsonify(predict_many(items, *_options(body), start)[0])


@bp.post("/predict/batch")
def predict_batch():
    """Several images (multipart ``images`` repeated, or a JSON list) -> ``{"results": [...]}``."""
    start = time.perf_counter()
    items, body = read_images(batch=True)
    return jsonify(results=predict_many(items, *_options(body), start))


# ---------------------------------------------------------------- files and info
@bp.get("/results/<result_id>/<path:name>")
def result_file(result_id: str, name: str):
    """A file of a stored result (only names the store knows; never a path the client builds)."""
    path = get_store().path(result_id, name)
    mimetype = {"png": "image/png", "zip": "application/zip", "json": "application/json"}[path.suffix[1:]]
    return send_file(path, mimetype=mimetype, max_age=0, as_attachment=path.suffix == ".zip" or path.name == "labelme.json",
                     download_name=f"{result_id[:8]}_{path.name}")


@bp.get("/model")
def model():
    """Classes, backbone, engine, device and the default threshold of the loaded model."""
    return jsonify(get_service().model_info())


@meta_bp.get("/health")
def health():
    """Liveness: 200 once the model is loaded (it is loaded before the server accepts connections)."""
    service = current_app.extensions.get("inference")
    return jsonify(status="ok", model_loaded=service is not None,
                   classes=service.predictor.class_names if service else [],
                   device=str(service.predictor.device) if service else None)


@meta_bp.get("/openapi.json")
def openapi():
    """The API described in OpenAPI 3."""
    return jsonify(openapi_spec())
