"""What /openapi.json says beyond the view decorators: the conventions every operation shares.

* Every error is ``ErrorSchema`` (``{"error": {...}}``), the shape ``errors.error_response``
  dumps through; flask-smorest's own ``Error`` shape is never referenced.
* Every /v1 operation can answer 401; every operation with a body 400
  (malformed JSON), 413 (too large) and 422; anything else is ``default``.
* Every response carries ``X-Request-ID``; every request may send one.
* ``X-Pagination`` is a header holding a JSON *string*, documented as such.
"""

from __future__ import annotations

from apispec import BasePlugin
from werkzeug.http import HTTP_STATUS_CODES

ERROR_REF = {"$ref": "#/components/schemas/Error"}

REQUEST_ID_HEADER = {
    "description": "The request's id: the caller's X-Request-ID if it sent a printable one of 1-200 characters, "
                   "else a new UUID. Every log line and message the request causes carries it.",
    "schema": {"type": "string"},
}
REQUEST_ID_PARAMETER = {
    "in": "header", "name": "X-Request-ID", "required": False, "schema": {"type": "string", "maxLength": 200},
    "description": "Your id for this request (1-200 printable characters); echoed back and logged.",
}
IDEMPOTENCY_KEY_PARAMETER = {
    "in": "header", "name": "Idempotency-Key", "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
    "description": "Retry-safe creation: a second POST with the same key and body replays the first response "
                   "(with Idempotent-Replayed: true); with another body it is a 422.",
}
CREATED_HEADERS = {
    "Location": {"description": "Path of the new booking", "schema": {"type": "string"}},
    "Idempotent-Replayed": {"description": "Present, as \"true\", when this is the stored response of an earlier "
                                           "request with the same Idempotency-Key", "schema": {"type": "string",
                                                                                               "enum": ["true"]}},
}
PAGINATION_HEADERS = {
    "X-Pagination": {
        "description": "Pagination metadata as a JSON object in a string: "
                       "{total, total_pages, first_page?, last_page?, page?, previous_page?, next_page?}",
        "schema": {"type": "string", "contentMediaType": "application/json",
                   "contentSchema": {"$ref": "#/components/schemas/Pagination"}},
    },
}


def error_doc(code: int | str) -> dict:
    description = "Any other error" if code == "default" else HTTP_STATUS_CODES.get(int(code), "Error")
    if code == 405:
        description += "; the Allow header lists the methods that are"
    return {"description": description, "content": {"application/json": {"schema": ERROR_REF}}}


def error_responses(*codes: int) -> dict:
    """For ``blp.doc(responses=...)``: the errors an operation answers besides the conventional ones."""
    return {code: error_doc(code) for code in codes}


class ApiConventions(BasePlugin):
    """apispec plugin applying the module docstring's conventions to every operation."""

    def operation_helper(self, path=None, operations=None, **kwargs):
        for operation in (operations or {}).values():
            operation["parameters"] = [*operation.get("parameters", []), REQUEST_ID_PARAMETER]
            # flask-smorest names component responses (UNPROCESSABLE_ENTITY, DEFAULT_ERROR) of its own error shape.
            responses = {str(code): error_doc(code if code == "default" else int(code)) if isinstance(doc, str) else doc
                         for code, doc in operation.get("responses", {}).items()}
            conventional = [401] if path and path.startswith("/v1/") else []
            if "requestBody" in operation:
                conventional += [400, 413, 422]
            for code in conventional:
                responses.setdefault(str(code), error_doc(code))
            responses.setdefault("default", error_doc("default"))
            operation["responses"] = {
                code: {**doc, "headers": {**doc.get("headers", {}), "X-Request-ID": REQUEST_ID_HEADER}}
                for code, doc in responses.items()
            }


def register_components(spec) -> None:
    """Components referenced by name above. ``Error`` is ``ErrorSchema``, registered by the Api (its ERROR_SCHEMA)."""
    from booking_service.api.schemas import PaginationSchema

    spec.components.schema("Pagination", schema=PaginationSchema)
