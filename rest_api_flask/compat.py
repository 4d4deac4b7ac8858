"""Compatible routes of the older kits, for their existing clients.

The detectron2 Flask API (here: ``/api``, ``/api/detect-area-base64``, ``/api/detect-area-all``,
``/api/detect-area-by-name``): the same payloads, response shapes, status codes and file names
(``OUTPUT_PARTIAL_IMAGE_<stem>_<i>.jpg`` crops, the output image under the name asked for, the
base64 ``.txt`` copies with ``--legacy-base64-folder``, the 0.7 scale with
``--legacy-output-scale 0.7``), minus that API's bugs: the threshold is honoured, names never
leave the upload and output folders, missing fields are a 400, concurrent requests do not share
state, and a folder of any size runs in groups of ``--max-batch`` images.

The detectron2 web app (``POST /detect`` with a multipart ``file``, ``GET /detect?url=...``) is
:mod:`rest_api_flask.compat_webapp`; :func:`init_app` registers both.
"""

from __future__ import annotations

import base64
import glob
import html
import json
import logging
import re
from pathlib import Path

import numpy as np
from flask import Blueprint, Flask, Response, current_app, jsonify, request, stream_with_context
from PIL import Image

from maskrcnn_finetune.data.images import IMAGE_SUFFIXES
from maskrcnn_finetune.errors import ConfigError
from maskrcnn_finetune.files import write_bytes_atomic
from maskrcnn_finetune.structures import Instances
from maskrcnn_finetune.visualize import draw_instances
from rest_api_flask import compat_webapp
from rest_api_flask.encoding import encode_image
from rest_api_flask.errors import ApiError
from rest_api_flask.inference import get_service
from rest_api_flask.inputs import decode_base64, decode_image

logger = logging.getLogger(__name__)

bp = Blueprint("compat", __name__, url_prefix="/api")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_NAME_BYTES = 180  # room for the crops' prefix and the atomic writes' temporary suffix within 255
PARTIAL = "OUTPUT_PARTIAL_IMAGE_"
PARTIAL_BASE64 = "OUTPUT_PARTIAL_IMAGE_BASE_"


def init_app(app: Flask) -> None:
    """Registers the compatible routes and prepares ``--legacy-base64-folder`` when one is given."""
    folder = app.config.get("LEGACY_BASE64_FOLDER")
    if folder:
        folder = Path(folder).resolve()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the --legacy-base64-folder '{folder}' ({exc.strerror}); "
                              "pass a folder you can write to") from exc
        app.config["LEGACY_BASE64_FOLDER"] = str(folder)
    app.register_blueprint(bp)
    app.register_blueprint(compat_webapp.bp)


# ---------------------------------------------------------------- the detectron2 Flask API
@bp.errorhandler(ApiError)
def _legacy_error(exc: ApiError):
    # the old clients read "data" and "status_code"; "error" is what every other route answers
    return jsonify(data=exc.message, error=exc.message, status_code=exc.status), exc.status


def _message(text: str):
    """The old API's answer for an empty folder or an unknown name: HTTP 200 with a message."""
    return jsonify(data={"message": text}, status_code=200)


@bp.get("")
def liveness():
    """The old API's ``GET /api`` page: says the app runs, and on which port."""
    port = html.escape(str(request.environ.get("SERVER_PORT", "")))
    return (f"<h1>The Flask App has been started on port {port}</h1>\n"
            "<p>The model is loaded; <a href=\"../health\">/health</a> answers as JSON.</p>\n")


def _payload() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError("the body must be a JSON object (Content-Type: application/json); see the payloads in "
                       "the README's section 'Coming from the detectron2 Flask API'", 400)
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


def given_name(value, field: str) -> str:
    """A client's file name kept as given (spaces, accents), reduced to its last part (``../../x.png`` ->
    ``x.png``) so that it stays inside its folder; an image suffix is added when it has none.

    Raises:
        ApiError: 400 for no name, ``.``/``..``, a hidden name, control characters or a name too long.
    """
    if not isinstance(value, str) or not value.strip():
        raise ApiError(f"missing field '{field}': send a file name such as 'photo.png'", 400)
    name = value.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if not name or name.startswith(".") or _CONTROL.search(name) or len(name.encode()) > _MAX_NAME_BYTES:
        raise ApiError(f"'{field}' {value[:100]!r} is not a usable file name; send a plain name such as 'photo.png' "
                       f"(not starting with a dot, no control characters, at most {_MAX_NAME_BYTES} bytes)", 400)
    if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
        name += ".png"
    return name


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path``, with every link followed, is a file inside ``folder``."""
    resolved = path.resolve()
    return resolved.is_file() and resolved.is_relative_to(folder.resolve())


def upload_entry(name: str, upload: Path) -> Path | None:
    """The file ``name`` of the upload folder, looked up as it is there (``my photo.png`` stays that); None when
    the folder has no such file.

    Raises:
        ApiError: 400 for a path (``../x.png``, ``/etc/x.png``, ``sub/x.png``) or a link that leaves the folder.
    """
    if not name:
        raise ApiError("'image_names' holds an empty name; send the file names of images in the upload folder", 400)
    if "/" in name or "\\" in name or name in (".", "..") or "\x00" in name:
        raise ApiError(f"{name[:100]!r} is a path; 'image_names' takes the plain file names of images inside the "
                       "upload folder, e.g. \"photo.png\"", 400)
    path = upload / name
    if not (path.exists() or path.is_symlink()):
        return None
    if path.is_symlink() and not _inside(path, upload):
        raise ApiError(f"{name!r} is a link to outside the upload folder, which the server does not read; copy the "
                       "image into the upload folder instead", 400)
    return path if path.is_file() else None


def _folder_images(upload: Path) -> list[Path]:
    """The images of the upload folder (not its sub-folders, hidden files or links that leave it), by name."""
    images = []
    for path in sorted(upload.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        if path.is_symlink() and not _inside(path, upload):
            logger.warning("skipping %s: a link to outside the upload folder", path.name)
            continue
        images.append(path)
    return images


def _crop(image: np.ndarray, box) -> np.ndarray:
    height, width = image.shape[:2]
    x0, y0 = max(0, int(box[0])), max(0, int(box[1]))
    x1, y1 = min(width, max(x0 + 1, int(np.ceil(box[2])))), min(height, max(y0 + 1, int(np.ceil(box[3]))))
    return image[y0:y1, x0:x1]


def _scaled(drawn: np.ndarray, scale: float) -> np.ndarray:
    """The drawn image at ``--legacy-output-scale`` (0.7: the old API's size, as detectron2's Visualizer rounds)."""
    if scale == 1.0:
        return drawn
    height, width = drawn.shape[:2]
    size = (max(1, int(width * scale + 1e-2)), max(1, int(height * scale + 1e-2)))
    return np.asarray(Image.fromarray(drawn).resize(size, Image.Resampling.BILINEAR))


def _remove_stale(folder: Path, prefix: str, stem: str, suffix: str, keep: int) -> None:
    """Removes ``<prefix><stem>_<i><suffix>`` for ``i >= keep``: an earlier answer under the same name that found
    more instances would otherwise leave crops that pass for this one's."""
    pattern = re.compile(re.escape(prefix + stem) + r"_(\d+)" + re.escape(suffix))
    for path in folder.glob(glob.escape(prefix + stem) + "_*" + glob.escape(suffix)):
        match = pattern.fullmatch(path.name)
        if match and int(match.group(1)) >= keep:
            path.unlink(missing_ok=True)


def legacy_result(image: np.ndarray, instances: Instances, output_name: str, base64_name: str) -> dict:
    """The old answer for one image; writes its files as the old API named them.

    Writes the drawn image as ``<output folder>/<output_name>`` and each instance's box as
    ``<output folder>/OUTPUT_PARTIAL_IMAGE_<stem>_<i>.jpg``; with ``--legacy-base64-folder`` also their base64
    as ``<base64_name>`` and ``OUTPUT_PARTIAL_IMAGE_BASE_<stem>_<i>.txt`` there.
    """
    config = current_app.config
    output = Path(config["OUTPUT_FOLDER"])
    text_folder = Path(config["LEGACY_BASE64_FOLDER"]) if config.get("LEGACY_BASE64_FOLDER") else None
    stem = Path(output_name).stem
    drawn = _scaled(draw_instances(image, instances, remove_colors=config["REMOVE_COLORS"]),
                    float(config["LEGACY_OUTPUT_SCALE"]))
    drawn_bytes = encode_image(drawn, Image.registered_extensions()[Path(output_name).suffix.lower()])
    write_bytes_atomic(output / output_name, drawn_bytes)
    drawn_text = base64.b64encode(drawn_bytes)
    if text_folder:
        write_bytes_atomic(text_folder / base64_name, drawn_text)
    boxes, partials = [], []
    for k in range(len(instances)):
        boxes.append([{f"box_{k}": [float(v) for v in instances.boxes[k]]}, {f"score_{k}": float(instances.scores[k])}])
        jpeg = encode_image(_crop(image, instances.boxes[k]), "JPEG")
        write_bytes_atomic(output / f"{PARTIAL}{stem}_{k}.jpg", jpeg)
        jpeg_text = base64.b64encode(jpeg)
        if text_folder:
            write_bytes_atomic(text_folder / f"{PARTIAL_BASE64}{stem}_{k}.txt", jpeg_text)
        partials.append({f"partial_image_{k}": jpeg_text.decode("ascii")})
    _remove_stale(output, PARTIAL, stem, ".jpg", len(instances))
    if text_folder:
        _remove_stale(text_folder, PARTIAL_BASE64, stem, ".txt", len(instances))
    return {
        "detected_bounding_boxes": boxes,
        "partial_images": partials,
        "output_image": drawn_text.decode("ascii"),
        # new: the name written, what the older kits got wrong (overlaps counted once) and what they never returned
        "output_image_name": output_name,
        "masked_fraction": round(instances.masked_fraction(), 6),
        "class_names": instances.labels,
    }


def _check_folders() -> None:
    if Path(current_app.config["UPLOAD_FOLDER"]) == Path(current_app.config["OUTPUT_FOLDER"]):
        raise ApiError("the upload and output folders are the same, so the drawn images would replace the inputs; "
                       "start the server with different --upload-folder and --output-folder", 409)


def _run_group(paths: list[Path], threshold: float) -> list[dict]:
    """One group of images: decoded, run in one turn of the model, answered in the old item shape.

    An image that cannot be read gets its item with empty results and an ``error`` naming the file,
    so one bad file does not stop a folder.
    """
    max_pixels = current_app.config["MAX_PIXELS"]
    items, images = [], []
    for path in paths:
        item = {"input_image_name": path.name}
        try:
            images.append(decode_image(path.read_bytes(), max_pixels, what=f"image {path.name!r}"))
        except ApiError as exc:
            item.update(detected_bounding_boxes=[], partial_images=[], output_image="",
                        error=f"{exc.message} (remove or replace it in the upload folder)")
            images.append(None)
        items.append(item)
    ready = [k for k, image in enumerate(images) if image is not None]
    try:
        results, _ = get_service().predict([images[k] for k in ready], threshold) if ready else ([], 0.0)
    except ApiError as exc:  # 429: the model is too busy for this group
        for k in ready:
            items[k].update(detected_bounding_boxes=[], partial_images=[], output_image="", error=exc.message)
        return items
    for k, instances in zip(ready, results):
        name = paths[k].name
        try:
            items[k].update(legacy_result(images[k], instances, name, f"OUTPUT_BASE_{Path(name).stem}.txt"))
        except OSError as exc:  # the answer is already on its way: say it in the item, keep going
            logger.warning("cannot write the output files of %s: %s", name, exc)
            items[k].update(detected_bounding_boxes=[], partial_images=[], output_image="",
                            error=f"cannot write the output files of {name!r} ({exc.strerror or exc}); "
                                  "check that the --output-folder is writable and has space")
    return items


def _stream_items(paths: list[Path], threshold: float) -> Response:
    """``{"data": [item, ...], "status_code": 200}``, sent as each group of ``--max-batch`` images is done.

    A folder of any size is answered: the model is taken one group at a time (other clients' requests run
    in between) and only one group's images are held in memory.
    """
    group = max(1, int(current_app.config["MAX_BATCH"]))

    def generate():
        yield '{"data": ['
        first = True
        for start in range(0, len(paths), group):
            for item in _run_group(paths[start:start + group], threshold):
                yield ("" if first else ", ") + json.dumps(item)
                first = False
        yield '], "status_code": 200}'

    return Response(stream_with_context(generate()), mimetype="application/json")


@bp.post("/detect-area-base64")
def detect_area_base64():
    """A base64 image in; boxes, scores, the drawn image and the crops (base64) out."""
    body = _payload()
    for field in ("image_string", "input_image_name", "output_image_name", "threshold_value"):
        if body.get(field) is None:
            raise ApiError(f"missing field '{field}'; the payload needs threshold_value, image_string, "
                           "input_image_name and output_image_name", 400)
    threshold = _threshold(body, required=True)
    input_name = given_name(body["input_image_name"], "input_image_name")
    output_name = given_name(body["output_image_name"], "output_image_name")
    raw = decode_base64(body["image_string"], "image_string")
    image = decode_image(raw, current_app.config["MAX_PIXELS"])
    write_bytes_atomic(Path(current_app.config["UPLOAD_FOLDER"]) / input_name, raw)
    (instances,), _ = get_service().predict([image], threshold)
    data = legacy_result(image, instances, output_name, "OUTPUT_BASE.txt")
    data["input_image_name"] = input_name  # new: the name actually written
    return jsonify(data=data, status_code=200)


@bp.post("/detect-area-all")
def detect_area_all():
    """Every image in the upload folder (not its sub-folders): a list of items, one per image."""
    threshold = _threshold(_payload(), required=True)
    _check_folders()
    paths = _folder_images(Path(current_app.config["UPLOAD_FOLDER"]))
    if not paths:
        return _message("no input files")
    return _stream_items(paths, threshold)


@bp.post("/detect-area-by-name")
def detect_area_by_name():
    """The named images of the upload folder; ``threshold_value`` is optional here, as the old README says."""
    body = _payload()
    names = body.get("image_names")
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not names:
        raise ApiError("missing field 'image_names': send a list of file names in the upload folder, "
                       "e.g. [\"a.png\"]", 400)
    threshold = _threshold(body, required=False)
    _check_folders()
    upload = Path(current_app.config["UPLOAD_FOLDER"])
    if not all(isinstance(name, str) for name in names):
        raise ApiError("'image_names' must be a list of file names (strings), e.g. [\"a.png\"]", 400)
    paths = []
    for name in dict.fromkeys(names):  # each image once, in the order asked
        path = upload_entry(name, upload)
        if path is None:
            return _message(f"no such image {name}")
        paths.append(path)
    return _stream_items(paths, threshold)
