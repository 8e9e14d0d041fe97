"""One JSON error shape for every error the API returns.

``{"error": {"code": 422, "status": "Unprocessable Entity", "message": "...",
"details": {...}, "request_id": "..."}}``
"""

from __future__ import annotations

import structlog
from flask import Flask, g, jsonify
from werkzeug.exceptions import HTTPException, InternalServerError

from ..errors import BookingError

log = structlog.get_logger(__name__)


def error_response(code: int, message: str, details: dict | None = None, headers: dict | None = None):
    from werkzeug.http import HTTP_STATUS_CODES

    body = {"code": code, "status": HTTP_STATUS_CODES.get(code, "Error"), "message": message,
            "request_id": getattr(g, "request_id", None)}
    if details:
        body["details"] = details
    response = jsonify({"error": body})
    response.status_code = code
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _http(exc: HTTPException):
    data = getattr(exc, "data", None) or {}
    details = data.get("messages")
    if details and set(details) == {"json"}:
        details = details["json"]  # webargs nests body errors under their location
    message = "Invalid input." if exc.code == 422 and details else (exc.description or exc.name)
    headers = dict(data.get("headers") or {})
    return error_response(exc.code or 500, message, details, headers)


def _domain(exc: BookingError):
    return error_response(exc.status, str(exc))


def _unexpected(exc: Exception):
    log.exception("unhandled_error")
    return error_response(500, InternalServerError.description)


def register(app: Flask) -> None:
    # Registered after flask-smorest's own handler, so these win.
    app.register_error_handler(HTTPException, _http)
    app.register_error_handler(BookingError, _domain)
    app.register_error_handler(Exception, _unexpected)
