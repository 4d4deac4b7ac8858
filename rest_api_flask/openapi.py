"""The API described in OpenAPI 3, by hand, next to the routes it describes (served at ``/openapi.json``)."""

from __future__ import annotations

_ERROR = {"description": "an error; `error` names the problem and the fix",
          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_IMAGE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
            "image": {"type": "string", "format": "binary"},
            "threshold": {"type": "number", "minimum": 0, "maximum": 1},
            "polygons": {"type": "string", "enum": ["0", "1"]}}}},
        "application/json": {"schema": {"type": "object", "properties": {
            "image_base64": {"type": "string", "description": "the image file, base64 (a data: URL prefix is accepted)"},
            "url": {"type": "string", "description": "a public http(s) image address"},
            "filename": {"type": "string"},
            "threshold": {"type": "number", "minimum": 0, "maximum": 1},
            "polygons": {"type": "boolean"}}}},
    },
}
_QUERY = [
    {"name": "threshold", "in": "query", "schema": {"type": "number", "minimum": 0, "maximum": 1}},
    {"name": "polygons", "in": "query", "schema": {"type": "string", "enum": ["0", "1"]}},
]
_ERRORS = {str(code): _ERROR for code in (400, 401, 404, 413, 415, 422, 429, 500)}
_RESULT_FILE = {"get": {
    "summary": "a file of a stored result (removed after the retention time)",
    "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
    "responses": {"200": {"description": "the file"}, "404": _ERROR},
}}
_LEGACY = {"summary": "compatible route of the older detectron2 Flask API",
           "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
           "responses": {"200": {"description": "{\"data\": {...}, \"status_code\": 200}"}, "400": _ERROR}}


def openapi_spec() -> dict:
    """The OpenAPI 3 document of the server."""
    return {
        "openapi": "3.0.3",
        "info": {"title": "maskrcnn-finetune server", "version": "1",
                 "description": "Instance segmentation with a fine-tuned Mask R-CNN: masks first."},
        "paths": {
            "/api/v1/predict": {"post": {
                "summary": "one image -> instances (class, score, box, area, COCO RLE mask) and result links",
                "parameters": _QUERY, "requestBody": _IMAGE_BODY,
                "responses": {"200": {"description": "the prediction",
                                      "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Result"}}}},
                              **_ERRORS}}},
            "/api/v1/predict/batch": {"post": {
                "summary": "several images: multipart `images` repeated, or a JSON list of image objects",
                "parameters": _QUERY,
                "responses": {"200": {"description": "{\"results\": [Result, ...]}"}, **_ERRORS}}},
            "/api/v1/results/{id}/overlay.png": _RESULT_FILE,
            "/api/v1/results/{id}/masks.zip": _RESULT_FILE,
            "/api/v1/results/{id}/result.json": _RESULT_FILE,
            "/api/v1/results/{id}/coco_results.json": _RESULT_FILE,
            "/api/v1/results/{id}/labelme.json": _RESULT_FILE,
            "/api/v1/results/{id}/instances/{k}/mask.png": _RESULT_FILE,
            "/api/v1/results/{id}/instances/{k}/crop.png": _RESULT_FILE,
            "/api/v1/model": {"get": {"summary": "classes, backbone, engine, device",
                                      "responses": {"200": {"description": "model information"}}}},
            "/health": {"get": {"summary": "liveness",
                                "responses": {"200": {"description": "{\"status\": \"ok\", \"model_loaded\": true}"}}}},
            "/api/detect-area-base64": {"post": _LEGACY},
            "/api/detect-area-all": {"post": _LEGACY},
            "/api/detect-area-by-name": {"post": _LEGACY},
        },
        "components": {"schemas": {
            "Error": {"type": "object", "properties": {"error": {"type": "string"}}},
            "Instance": {"type": "object", "properties": {
                "index": {"type": "integer"}, "class_id": {"type": "integer"}, "class_name": {"type": "string"},
                "score": {"type": "number"}, "box": {"type": "array", "items": {"type": "number"}},
                "area": {"type": "integer"}, "area_fraction": {"type": "number"},
                "mask_rle": {"type": "object", "properties": {"size": {"type": "array"}, "counts": {"type": "string"}}},
                "polygons": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                "links": {"type": "object"}}},
            "Result": {"type": "object", "properties": {
                "id": {"type": "string"}, "image": {"type": "object"}, "model": {"type": "object"},
                "threshold": {"type": "number"}, "timing_ms": {"type": "object"},
                "masked_fraction": {"type": "number"}, "num_instances": {"type": "integer"},
                "instances": {"type": "array", "items": {"$ref": "#/components/schemas/Instance"}},
                "links": {"type": "object"}}},
        }},
    }
