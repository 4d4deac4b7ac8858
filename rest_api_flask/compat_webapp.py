"""The detectron2 web app's route, for its existing form and clients: ``POST /detect`` with a multipart
``file``, or ``GET /detect?url=...``; the answer is the image with its instances drawn, as JPEG.

The URL is fetched with the kit's rules (:func:`rest_api_flask.inputs.fetch_url`: public http(s)
addresses only, every redirect checked, time and size limits); ``?threshold=`` is optional.
Registered by :func:`rest_api_flask.compat.init_app`.
"""

from __future__ import annotations

import html

from flask import Blueprint, Response, current_app, jsonify, request

from maskrcnn_finetune.visualize import draw_instances
from rest_api_flask.encoding import encode_image
from rest_api_flask.errors import ApiError
from rest_api_flask.inference import get_service
from rest_api_flask.inputs import decode_image, fetch_url, parse_threshold

bp = Blueprint("compat_webapp", __name__)


@bp.errorhandler(ApiError)
def _detect_error(exc: ApiError):
    # the old app answered its HTML form with a page; programs get the JSON every other route answers
    if request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html":
        page = f"<p>Error in retrieving image: {html.escape(exc.message)}</p>\n"
        return Response(page, status=exc.status, mimetype="text/html")
    return jsonify(error=exc.message), exc.status


@bp.route("/detect", methods=["GET", "POST"])
def detect():
    """The detectron2 web app's route: a multipart ``file`` (POST) or ``?url=`` (GET) in, the drawn image out."""
    config = current_app.config
    threshold = parse_threshold(request.args.get("threshold"), config["THRESHOLD"])  # before any download
    if request.method == "POST":
        storage = request.files.get("file")
        if storage is None:
            sent = ", ".join(repr(k) for k in list(request.files) + list(request.form)) or "none"
            raise ApiError(f"no file in the multipart field 'file' (fields sent: {sent}); send the image as a file "
                           "field named 'file', or GET /detect?url=<address of an image>", 400)
        raw = storage.read()
    else:
        url = request.args.get("url")
        if not url:
            raise ApiError("GET /detect needs ?url=<the http(s) address of an image>; or POST the image as a "
                           "multipart file field 'file'", 400)
        raw = fetch_url(url, max_bytes=int(config["URL_MAX_MB"] * 2**20), timeout=config["URL_TIMEOUT_S"],
                        allow_loopback=config["URL_ALLOW_LOOPBACK"])
    image = decode_image(raw, config["MAX_PIXELS"])
    (instances,), _ = get_service().predict([image], threshold)
    jpeg = encode_image(draw_instances(image, instances, remove_colors=config["REMOVE_COLORS"]), "JPEG")
    return Response(jpeg, mimetype="image/jpeg", headers={"X-Instances": str(len(instances))})
