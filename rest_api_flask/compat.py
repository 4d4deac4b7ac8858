"""Compatible routes of the older detectron2 Flask API, for its existing clients.

Same paths, payloads and response shape (``{"data": ..., "status_code": 200}``), minus that
API's bugs: the threshold is honoured, names are reduced to plain file names inside the upload
and output folders, missing fields are a 400, and concurrent requests do not share state.
"""

from __future__ import annotations

import base64
import glob
import io
from pathlib import Path

import numpy as np
from flask import Blueprint, current_app, jsonify, request
from PIL import Image

from maskrcnn_finetune.data.images import IMAGE_SUFFIXES
from maskrcnn_finetune.files import write_bytes_atomic
from maskrcnn_finetune.structures import Instances
from maskrcnn_finetune.visualize import draw_instances
from rest_api_flask.errors import ApiError
from rest_api_flask.inference import get_service
from rest_api_flask.inputs import clean_filename, decode_base64, decode_image

bp = Blueprint("compat", __name__, url_prefix="/api")

_PIL_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF",
                ".webp": "WEBP", ".gif": "GIF"}


@bp.errorhandler(ApiError)
def _legacy_error(exc: ApiError):
    # the old clients read "data" and "status_code"; "error" is what every other route answers
    return jsonify(data=exc.message, error=exc.message, status_code=exc.status), exc.status


def _payload() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError("the body must be a JSON object (Content-Type: application/json); see the payloads in "
                       "the README's legacy API section", 400)
    return body


def _threshold(body: dict, required: bool) -> float:
    value = body.get("threshold_value")
    if value is None:
        if required:
            raise ApiError("missing field 'threshold_value': send a number between 0 and 1, e.g. 0.5", 400)
        return float(current_app.config["THRESHOLD"])
    try:
        value = float(value)
    except (TypeError, ValueError) as exc:
        raise ApiError(f"'threshold_value' must be a number between 0 and 1, got {str(value)[:50]!r}", 400) from exc
    if not 0.0 <= value <= 1.0:
        raise ApiError(f"'threshold_value' must be between 0 and 1, got {value}", 400)
    return value


def _plain_name(value, field: str) -> str:
    """A client's file name reduced to a plain, safe name (``../../x.png`` -> ``x.png``) with an image suffix."""
    if not isinstance(value, str) or not value.strip():
        raise ApiError(f"missing field '{field}': send a file name such as 'photo.png'", 400)
    name = clean_filename(value)
    if name is None:
        raise ApiError(f"'{field}' {value[:100]!r} has no usable file name; send a name such as 'photo.png'", 400)
    if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
        name += ".png"
    return name


def _encode(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    if fmt in ("JPEG", "BMP") and image.mode == "RGBA":
        image = image.convert("RGB")
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _crop(image: np.ndarray, box) -> np.ndarray:
    height, width = image.shape[:2]
    x0, y0 = max(0, int(box[0])), max(0, int(box[1]))
    x1, y1 = min(width, max(x0 + 1, int(np.ceil(box[2])))), min(height, max(y0 + 1, int(np.ceil(box[3]))))
    return image[y0:y1, x0:x1]


def _legacy_result(image: np.ndarray, instances: Instances, output_name: str) -> dict:
    """The old response's ``data`` for one image; writes the output image and crops into the output folder."""
    output = Path(current_app.config["OUTPUT_FOLDER"])
    suffix = Path(output_name).suffix.lower()
    drawn = _encode(draw_instances(image, instances), _PIL_FORMATS[suffix])
    write_bytes_atomic(output / output_name, drawn)
    boxes, partials = [], []
    for k in range(len(instances)):
        boxes.append([{f"box_{k}": [float(v) for v in instances.boxes[k]]}, {f"score_{k}": float(instances.scores[k])}])
        jpeg = _encode(_crop(image, instances.boxes[k]), "JPEG")
        write_bytes_atomic(output / f"{Path(output_name).stem}_partial_{k}.jpg", jpeg)
        partials.append({f"partial_image_{k}": base64.b64encode(jpeg).decode("ascii")})
    # crops of an earlier answer under the same name that found more instances would pass for this one's
    for stale in output.glob(f"{glob.escape(Path(output_name).stem)}_partial_*.jpg"):
        index = stale.stem.rsplit("_", 1)[-1]
        if index.isdigit() and int(index) >= len(instances):
            stale.unlink(missing_ok=True)
    return {
        "detected_bounding_boxes": boxes,
        "output_image": base64.b64encode(drawn).decode("ascii"),
        "partial_images": partials,
        # new: what the older kits got wrong (overlaps counted once) and what they never returned
        "masked_fraction": round(instances.masked_fraction(), 6),
        "class_names": instances.labels,
    }


def _predict_files(names: list[str], threshold: float) -> dict:
    limit = current_app.config["MAX_BATCH"]
    if len(names) > limit:  # one request must not hold the model and the memory for a whole folder
        raise ApiError(f"{len(names)} images in one request, the server takes at most {limit}; ask for them in "
                       "groups with /api/detect-area-by-name", 413)
    upload = Path(current_app.config["UPLOAD_FOLDER"])
    max_pixels = current_app.config["MAX_PIXELS"]
    data = {}
    for name in names:
        path = upload / name
        if not path.is_file():
            raise ApiError(f"image {name!r} is not in the upload folder; put it there first "
                           "(or send it to /api/detect-area-base64)", 404)
        image = decode_image(path.read_bytes(), max_pixels, what=f"image {name!r}")
        (instances,), _ = get_service().predict([image], threshold)
        data[name] = _legacy_result(image, instances, f"{Path(name).stem}_output.png")
    return data


@bp.post("/detect-area-base64")
def detect_area_base64():
    """A base64 image in; boxes, scores, the drawn image and the crops (base64) out."""
    body = _payload()
    for field in ("image_string", "input_image_name", "output_image_name", "threshold_value"):
        if body.get(field) is None:
            raise ApiError(f"missing field '{field}'; the payload needs threshold_value, image_string, "
                           "input_image_name and output_image_name", 400)
    threshold = _threshold(body, required=True)
    input_name = _plain_name(body["input_image_name"], "input_image_name")
    output_name = _plain_name(body["output_image_name"], "output_image_name")
    raw = decode_base64(body["image_string"], "image_string")
    image = decode_image(raw, current_app.config["MAX_PIXELS"])
    write_bytes_atomic(Path(current_app.config["UPLOAD_FOLDER"]) / input_name, raw)
    (instances,), _ = get_service().predict([image], threshold)
    data = _legacy_result(image, instances, output_name)
    data.update(input_image_name=input_name, output_image_name=output_name)  # the names actually written
    return jsonify(data=data, status_code=200)


@bp.post("/detect-area-all")
def detect_area_all():
    """Every image in the upload folder (not its sub-folders), keyed by file name."""
    threshold = _threshold(_payload(), required=True)
    upload = Path(current_app.config["UPLOAD_FOLDER"])
    names = sorted(p.name for p in upload.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not names:
        raise ApiError("the upload folder holds no images; put .jpg/.png files into the --upload-folder first", 404)
    return jsonify(data=_predict_files(names, threshold), status_code=200)


@bp.post("/detect-area-by-name")
def detect_area_by_name():
    """The named images of the upload folder; ``threshold_value`` is optional here, as in the old API."""
    body = _payload()
    names = body.get("image_names")
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not names:
        raise ApiError("missing field 'image_names': send a list of file names in the upload folder, "
                       "e.g. [\"a.png\"]", 400)
    threshold = _threshold(body, required=False)
    clean = list(dict.fromkeys(_plain_name(name, "image_names") for name in names))  # each image once
    return jsonify(data=_predict_files(clean, threshold), status_code=200)
