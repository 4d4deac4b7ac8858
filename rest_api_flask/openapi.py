"""The API described in OpenAPI 3.0, next to the routes it describes (served at ``/openapi.json``).

``tests/rest_api_flask/test_openapi.py`` validates this document with ``openapi-spec-validator``,
checks that every route of the app is in it, and checks real answers of the app against its
response schemas.
"""

from __future__ import annotations

from maskrcnn_finetune.devices import RUNTIMES
from maskrcnn_finetune.engine_names import ENGINES
from rest_api_flask.encoding import RLE_FORMATS


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


_ERROR = _json(_ref("Error"), "an error; `error` names the problem and the fix")
_ERRORS = {str(code): _ERROR for code in (400, 401, 404, 413, 415, 422, 429, 500)}
_THRESHOLD = {"type": "number", "minimum": 0, "maximum": 1}
_IMAGE_ITEM = {"type": "object", "properties": {
    "image_base64": {"type": "string", "description": "the image file, base64 (a data: URL prefix is accepted)"},
    "url": {"type": "string", "description": "a public http(s) image address"},
    "filename": {"type": "string"}}}
_IMAGE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
            "image": {"type": "string", "format": "binary"},
            "threshold": _THRESHOLD,
            "polygons": {"type": "string", "enum": ["0", "1"]},
            "remove_colors": {"type": "string", "enum": ["0", "1"]}}}},
        "application/json": {"schema": {"allOf": [_IMAGE_ITEM, {"type": "object", "properties": {
            "threshold": _THRESHOLD, "polygons": {"type": "boolean"}, "remove_colors": {"type": "boolean"}}}]}},
    },
}
_BATCH_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["images"], "properties": {
            "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
            "threshold": _THRESHOLD,
            "polygons": {"type": "string", "enum": ["0", "1"]}}}},
        "application/json": {"schema": {"oneOf": [
            {"type": "array", "items": _IMAGE_ITEM, "minItems": 1},
            {"type": "object", "required": ["images"], "properties": {
                "images": {"type": "array", "items": _IMAGE_ITEM, "minItems": 1},
                "threshold": _THRESHOLD, "polygons": {"type": "boolean"}}}]}},
    },
}
_QUERY = [
    {"name": "threshold", "in": "query", "schema": _THRESHOLD},
    {"name": "polygons", "in": "query", "schema": {"type": "string", "enum": ["0", "1"]}},
    {"name": "rle", "in": "query", "description": "mask_rle as COCO's compressed string (default) or plain run lengths",
     "schema": {"type": "string", "enum": list(RLE_FORMATS)}},
    {"name": "remove_colors", "in": "query", "description": "overlay.png on a grey copy of the image (default: the "
     "server's --remove-colors)", "schema": {"type": "string", "enum": ["0", "1"]}},
]
_ID = {"name": "id", "in": "path", "required": True, "description": "the result id a prediction returned",
       "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}
_K = {"name": "k", "in": "path", "required": True, "description": "the instance number, 0 to num_instances - 1",
      "schema": {"type": "integer", "minimum": 0}}


def _result_file(media_type: str, what: str, instance: bool = False) -> dict:
    return {"get": {
        "summary": f"{what} of a stored result (removed after the retention time)",
        "parameters": [_ID, _K] if instance else [_ID],
        "responses": {"200": {"description": what, "content": {media_type: {"schema": {"type": "string",
                                                                                       "format": "binary"}}}},
                      "401": _ERROR, "404": _ERROR}}}


_LEGACY = {"summary": "compatible route of the older detectron2 Flask API",
           "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
           "responses": {"200": _json(_ref("Legacy"), "the older API's answer"), "400": _json(_ref("Legacy"), "bad input"),
                         "401": _ERROR, "404": _json(_ref("Legacy"), "no such image"),
                         "409": _json(_ref("Legacy"), "the upload and output folders are one folder"),
                         "413": _json(_ref("Legacy"), "too many images")}}

_DRAWN = {"description": "the image with its masks drawn (header X-Instances: how many)",
          "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}}
_NUMBER_LIST = {"type": "array", "items": {"type": "number"}}
SCHEMAS = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "Instance": {"type": "object", "required": ["index", "class_id", "class_name", "score", "box", "area",
                                                "area_fraction", "mask_rle", "links"], "properties": {
        "index": {"type": "integer", "minimum": 0},
        "class_id": {"type": "integer", "minimum": 0},
        "class_name": {"type": "string"},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "box": {**_NUMBER_LIST, "minItems": 4, "maxItems": 4, "description": "x1, y1, x2, y2 in pixels"},
        "area": {"type": "integer", "minimum": 0, "description": "mask pixels"},
        "area_fraction": {"type": "number", "minimum": 0, "maximum": 1},
        "mask_rle": {"type": "object", "required": ["size", "counts"], "description": "COCO RLE",
                     "properties": {"size": {"type": "array", "items": {"type": "integer"}, "minItems": 2,
                                             "maxItems": 2},
                                    "counts": {"oneOf": [
                                        {"type": "string", "description": "compressed (pycocotools)"},
                                        {"type": "array", "items": {"type": "integer", "minimum": 0},
                                         "description": "with rle=uncompressed: run lengths, column-major, "
                                                        "background first"}]}}},
        "polygons": {"type": "array", "items": _NUMBER_LIST, "description": "with polygons=1: x1, y1, x2, y2, ..."},
        "links": {"type": "object", "required": ["mask", "crop"], "properties": {
            "mask": {"type": "string"}, "crop": {"type": "string"}}}}},
    "Result": {"type": "object", "required": ["id", "image", "model", "threshold", "timing_ms", "masked_fraction",
                                              "num_instances", "instances", "links"], "properties": {
        "id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
        "image": {"type": "object", "required": ["width", "height", "filename"], "properties": {
            "width": {"type": "integer"}, "height": {"type": "integer"},
            "filename": {"type": "string", "nullable": True}}},
        "model": {"type": "object", "required": ["engine", "backbone", "classes"], "properties": {
            "engine": {"type": "string"}, "backbone": {"type": "string", "nullable": True},
            "classes": {"type": "array", "items": {"type": "string"}}}},
        "threshold": {"type": "number"},
        "timing_ms": {"type": "object", "required": ["model", "total"], "properties": {
            "model": {"type": "number"}, "total": {"type": "number"}}},
        "masked_fraction": {"type": "number", "minimum": 0, "maximum": 1},
        "num_instances": {"type": "integer", "minimum": 0},
        "instances": {"type": "array", "items": _ref("Instance")},
        "links": {"type": "object", "required": ["overlay", "masks_zip", "result_json", "coco_json", "labelme_json"],
                  "properties": {k: {"type": "string"} for k in ("overlay", "masks_zip", "result_json", "coco_json",
                                                                 "labelme_json")}}}},
    "Batch": {"type": "object", "required": ["results"], "properties": {
        "results": {"type": "array", "items": _ref("Result")}}},
    "Model": {"type": "object", "required": ["engine", "backbone", "classes", "device", "inference",
                                             "default_threshold"], "properties": {
        "engine": {"type": "string", "enum": list(ENGINES)},
        "backbone": {"type": "string", "nullable": True},
        "classes": {"type": "array", "items": {"type": "string"}},
        "device": {"type": "string"},
        "inference": {"type": "object", "properties": {
            "fast": {"type": "boolean"}, "precision": {"type": "string", "enum": ["fp32", "bf16"]},
            "channels_last": {"type": "boolean"},
            "runtime": {"type": "string", "enum": list(RUNTIMES)},
            "choice": {"type": "object", "description": "--runtime (default auto): the runtime that runs the model, "
                       "the one asked for and why; the checks that ran (parity: the instance-level check of "
                       "openvino; ap: int8's val mask AP and box AP against fp32's), for auto the timings, the "
                       "seconds the choice took, and where it was cached",
                       "properties": {"runtime": {"type": "string"}, "asked": {"type": "string"},
                                      "why": {"type": "string"}, "parity": {"type": "string"},
                                      "parity_ok": {"type": "boolean"}, "ap": {"type": "object"},
                                      "ap_ok": {"type": "boolean"},
                                      "ms_per_image": {"type": "object",
                                                       "additionalProperties": {"type": "number"}},
                                      "decision_s": {"type": "number"}, "cached": {"type": "object"}}}}},
        "default_threshold": {"type": "number"},
        "image_size": {"nullable": True},
        "micro_batch": {"type": "object", "description": "--micro-batch: the most images in one model call, how "
                        "long a request may wait for others, and the model calls and images so far",
                        "properties": {"max_images": {"type": "integer"}, "wait_ms": {"type": "number"},
                                       "model_calls": {"type": "integer"}, "images": {"type": "integer"},
                                       "largest_call": {"type": "integer"}}},
        "metrics": {"type": "object"}}},
    "Health": {"type": "object", "required": ["status", "model_loaded", "classes", "device"], "properties": {
        "status": {"type": "string", "enum": ["ok"]}, "model_loaded": {"type": "boolean"},
        "classes": {"type": "array", "items": {"type": "string"}}, "device": {"type": "string", "nullable": True}}},
    "Legacy": {"type": "object", "required": ["data", "status_code"], "properties": {
        "data": {}, "status_code": {"type": "integer"}}},
}


def openapi_spec() -> dict:
    """The OpenAPI 3.0 document of the server."""
    return {
        "openapi": "3.0.3",
        "info": {"title": "maskrcnn-finetune server", "version": "1",
                 "description": "Instance segmentation with a fine-tuned Mask R-CNN: masks first."},
        "paths": {
            "/api/v1/predict": {"post": {
                "summary": "one image -> instances (class, score, box, area, COCO RLE mask) and result links",
                "parameters": _QUERY, "requestBody": _IMAGE_BODY,
                "responses": {"200": _json(_ref("Result"), "the prediction"), **_ERRORS}}},
            "/api/v1/predict/batch": {"post": {
                "summary": "several images: multipart `images` repeated, or a JSON list of image objects",
                "parameters": _QUERY, "requestBody": _BATCH_BODY,
                "responses": {"200": _json(_ref("Batch"), "one result per image, in order"), **_ERRORS}}},
            "/api/v1/results/{id}/overlay.png": _result_file("image/png", "the image with the masks drawn"),
            "/api/v1/results/{id}/masks.zip": _result_file("application/zip", "every mask as a PNG, and their union"),
            "/api/v1/results/{id}/result.json": _result_file("application/json", "the prediction's JSON"),
            "/api/v1/results/{id}/coco_results.json": _result_file("application/json", "the instances as COCO results"),
            "/api/v1/results/{id}/labelme.json": _result_file("application/json",
                                                              "the instances as a labelme file (image embedded)"),
            "/api/v1/results/{id}/instances/{k}/mask.png": _result_file("image/png", "one instance's mask", True),
            "/api/v1/results/{id}/instances/{k}/crop.png": _result_file("image/png", "one instance cut out", True),
            "/api/v1/model": {"get": {"summary": "classes, backbone, engine, device",
                                      "responses": {"200": _json(_ref("Model"), "model information"),
                                                    "401": _ERROR}}},
            "/health": {"get": {"summary": "liveness (no authentication)",
                                "responses": {"200": _json(_ref("Health"), "the server is up, the model loaded")}}},
            "/openapi.json": {"get": {"summary": "this document",
                                      "responses": {"200": {"description": "OpenAPI 3.0",
                                                            "content": {"application/json": {}}}}}},
            "/api": {"get": {"summary": "liveness page of the older detectron2 Flask API",
                             "responses": {"200": {"description": "an HTML page saying the app runs",
                                                   "content": {"text/html": {}}}}}},
            "/detect": {
                "get": {"summary": "the older detectron2 web app: an image address -> the image with its masks drawn",
                        "parameters": [{"name": "url", "in": "query", "required": True, "schema": {"type": "string"}},
                                       {"name": "threshold", "in": "query", "schema": _THRESHOLD}],
                        "responses": {"200": _DRAWN, **_ERRORS}},
                "post": {"summary": "the older detectron2 web app: an uploaded image -> the image with its masks drawn",
                         "parameters": [{"name": "threshold", "in": "query", "schema": _THRESHOLD}],
                         "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                             "type": "object", "required": ["file"],
                             "properties": {"file": {"type": "string", "format": "binary"}}}}}},
                         "responses": {"200": _DRAWN, **_ERRORS}}},
            "/api/detect-area-base64": {"post": _LEGACY},
            "/api/detect-area-all": {"post": _LEGACY},
            "/api/detect-area-by-name": {"post": _LEGACY},
        },
        "components": {"schemas": SCHEMAS},
    }
