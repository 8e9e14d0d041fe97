"""/openapi.json is the API: the error shape, the statuses, the headers and the types it sends."""

from __future__ import annotations

import json

import jsonschema
import pytest

from booking_service.api.errors import ErrorSchema
from tests.booking.fixtures import AUTH, booking_body

OPERATIONS = [("/v1/bookings", "get"), ("/v1/bookings", "post"), ("/v1/bookings/{booking_id}", "get"),
              ("/v1/bookings/{booking_id}", "patch"), ("/v1/bookings/{booking_id}/cancel", "post"),
              ("/v1/bookings/{booking_id}/notifications", "get")]


@pytest.fixture
def spec(client) -> dict:
    return client.get("/openapi.json").json


def validator(spec: dict, ref: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({"$ref": ref, "components": spec["components"]})


def test_every_error_response_is_the_real_error_shape(spec):
    error = spec["components"]["schemas"]["Error"]
    assert error["required"] == ["error"] and "errors" not in json.dumps(error)
    body = spec["components"]["schemas"]["ErrorBody"]
    assert set(body["properties"]) == set(ErrorSchema().fields["error"].schema.fields)
    assert set(body["required"]) == {"code", "status", "message", "request_id"}
    assert "responses" not in spec["components"]  # flask-smorest's Error-shaped DEFAULT_ERROR etc. are gone
    assert [(p, m) for p, ops in spec["paths"].items() for m in ops if m != "parameters"] == OPERATIONS
    for path, method in OPERATIONS:
        for code, response in spec["paths"][path][method]["responses"].items():
            if code == "default" or code.startswith(("4", "5")):
                assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


def test_every_operation_documents_the_statuses_it_answers(spec):
    expected = {
        ("/v1/bookings", "get"): {"200", "401", "422"},
        ("/v1/bookings", "post"): {"201", "400", "401", "409", "413", "422"},
        ("/v1/bookings/{booking_id}", "get"): {"200", "401", "404"},
        ("/v1/bookings/{booking_id}", "patch"): {"200", "400", "401", "404", "409", "413", "422"},
        ("/v1/bookings/{booking_id}/cancel", "post"): {"200", "401", "404", "409"},
        ("/v1/bookings/{booking_id}/notifications", "get"): {"200", "401", "404", "422"},
    }
    for (path, method), codes in expected.items():
        responses = spec["paths"][path][method]["responses"]
        assert set(responses) == codes | {"default"}, (path, method)
        assert all("X-Request-ID" in r["headers"] for r in responses.values())
        assert "X-Request-ID" in {p["name"] for p in spec["paths"][path][method]["parameters"] if p["in"] == "header"}


def test_headers_are_documented_as_sent(client, spec):
    post = spec["paths"]["/v1/bookings"]["post"]
    assert "Idempotency-Key" in {p["name"] for p in post["parameters"] if p["in"] == "header"}
    assert {"Location", "Idempotent-Replayed"} <= set(post["responses"]["201"]["headers"])
    created = client.post("/v1/bookings", json=booking_body(), headers=AUTH)
    assert created.headers["Location"] == f"/v1/bookings/{created.json['id']}"
    pagination = spec["paths"]["/v1/bookings"]["get"]["responses"]["200"]["headers"]["X-Pagination"]["schema"]
    assert pagination["type"] == "string" and pagination["contentMediaType"] == "application/json"
    listed = client.get("/v1/bookings?page_size=1", headers=AUTH)
    metadata = json.loads(listed.headers["X-Pagination"])  # a JSON string, as documented
    validator(spec, pagination["contentSchema"]["$ref"]).validate(metadata)
    assert metadata == {"total": 1, "total_pages": 1, "first_page": 1, "last_page": 1, "page": 1}


def test_idempotent_replay_carries_its_documented_headers(client):
    headers = {**AUTH, "Idempotency-Key": "doc-replay"}
    body = booking_body()
    first = client.post("/v1/bookings", json=body, headers=headers)
    again = client.post("/v1/bookings", json=body, headers=headers)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == first.headers["Location"]


def test_a_booking_as_sent_validates_against_the_typed_document(client, spec):
    customer = spec["components"]["schemas"]["Booking"]["properties"]["customer"]
    assert customer == {"$ref": "#/components/schemas/BookingCustomer"}
    booking = client.post("/v1/bookings", json=booking_body(), headers=AUTH).json
    read = client.get(f"/v1/bookings/{booking['id']}", headers=AUTH).json
    assert read == booking
    validator(spec, "#/components/schemas/Booking").validate(read)
    with pytest.raises(jsonschema.ValidationError):
        validator(spec, "#/components/schemas/Booking").validate({**read, "customer": {"name": 1}})


def test_a_405_keeps_its_allow_header(client):
    response = client.delete("/v1/bookings", headers=AUTH)
    assert response.status_code == 405 and response.json["error"]["code"] == 405
    assert set(response.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
