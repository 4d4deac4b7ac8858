"""The OpenAPI document: valid OpenAPI 3.0, complete, and what the app really answers."""

from __future__ import annotations

import base64
import io
import re

import pytest
from openapi_schema_validator import OAS30Validator
from jsonschema.exceptions import ValidationError
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from rest_api_flask.openapi import openapi_spec


@pytest.fixture(scope="module")
def spec():
    return openapi_spec()


def _check(spec: dict, response, path: str, method: str = "get") -> None:
    """``response``'s JSON against the document's schema for its status at ``path``."""
    answer = spec["paths"][path][method]["responses"][str(response.status_code)]
    schema = answer["content"]["application/json"]["schema"]
    OAS30Validator({**schema, "components": spec["components"]}).validate(response.get_json())


def test_the_document_is_valid_openapi_3(client, spec):
    served = client.get("/openapi.json")
    assert served.status_code == 200 and served.get_json() == spec
    validate(spec)  # raises with the first problem


def test_every_route_of_the_app_is_in_the_document(app, spec):
    documented = set(spec["paths"])
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        if rule.endpoint.endswith("static") or path == "/":  # the web page and its files
            continue
        if path == "/api/v1/results/{result_id}/{name}":  # one Flask rule for the result files listed one by one
            assert {p for p in documented if p.startswith("/api/v1/results/{id}/")}
            continue
        assert path in documented, f"{path} ({rule.endpoint}) is not in the OpenAPI document"


def test_real_answers_follow_the_schemas(client, spec, sample_png):
    predict = client.post("/api/v1/predict?polygons=1", data={"image": (io.BytesIO(sample_png), "a.png")},
                          content_type="multipart/form-data")
    assert predict.status_code == 200 and predict.get_json()["num_instances"] > 0
    _check(spec, predict, "/api/v1/predict", "post")
    assert all("polygons" in i for i in predict.get_json()["instances"])

    as_json = client.post("/api/v1/predict", json={"image_base64": base64.b64encode(sample_png).decode(),
                                                   "threshold": 0.0})
    _check(spec, as_json, "/api/v1/predict", "post")

    batch = client.post("/api/v1/predict/batch", data={"images": [(io.BytesIO(sample_png), "1.png"),
                                                                 (io.BytesIO(sample_png), "2.png")]},
                        content_type="multipart/form-data")
    assert batch.status_code == 200 and len(batch.get_json()["results"]) == 2
    _check(spec, batch, "/api/v1/predict/batch", "post")
    listed = client.post("/api/v1/predict/batch", json=[{"image_base64": base64.b64encode(sample_png).decode()}])
    _check(spec, listed, "/api/v1/predict/batch", "post")

    stored = client.get(predict.get_json()["links"]["result_json"])
    assert stored.status_code == 200 and stored.get_json() == predict.get_json()
    OAS30Validator({"$ref": "#/components/schemas/Result", "components": spec["components"]}).validate(stored.get_json())

    _check(spec, client.get("/api/v1/model"), "/api/v1/model")
    _check(spec, client.get("/health"), "/health")
    legacy = client.post("/api/detect-area-base64", json={
        "threshold_value": 0.0, "image_string": base64.b64encode(sample_png).decode(),
        "input_image_name": "in.png", "output_image_name": "out.png"})
    assert legacy.status_code == 200
    _check(spec, legacy, "/api/detect-area-base64", "post")

    # errors: each status the routes answer has the Error schema
    for bad, status in ((client.post("/api/v1/predict"), 400),
                        (client.post("/api/v1/predict", data={"image": (io.BytesIO(b"text"), "x.png")},
                                     content_type="multipart/form-data"), 415),
                        (client.get("/api/v1/results/" + "0" * 32 + "/overlay.png"), 404)):
        assert bad.status_code == status
        path = "/api/v1/results/{id}/overlay.png" if status == 404 else "/api/v1/predict"
        _check(spec, bad, path, "get" if status == 404 else "post")


def test_a_wrong_answer_would_be_caught(spec):
    # the schemas are strict enough to notice a missing field or a wrong type
    result = {"$ref": "#/components/schemas/Result", "components": spec["components"]}
    with pytest.raises(ValidationError, match="required property"):
        OAS30Validator(result).validate({"id": "0" * 32})
    instance = {"$ref": "#/components/schemas/Instance", "components": spec["components"]}
    with pytest.raises(ValidationError, match="is not of type"):
        OAS30Validator(instance).validate({"index": 0, "class_id": 1, "class_name": "a", "score": "high",
                                           "box": [0, 0, 1, 1], "area": 1, "area_fraction": 0.1,
                                           "mask_rle": {"size": [1, 1], "counts": "1"},
                                           "links": {"mask": "m", "crop": "c"}})
    # and the validator notices a path parameter that is never declared (the document once had one)
    import copy

    broken = copy.deepcopy(spec)
    route = broken["paths"]["/api/v1/results/{id}/instances/{k}/mask.png"]["get"]
    route["parameters"] = [p for p in route["parameters"] if p["name"] != "k"]
    with pytest.raises(OpenAPIValidationError, match="Path parameter 'k' .* was not resolved"):
        validate(broken)
