"""One JSON error shape for every error the API returns.

``{"error": {"code": 422, "status": "Unprocessable Entity", "message": "...",
"details": {...}, "request_id": "..."}}``

``ErrorSchema`` both writes every error body (``error_response`` dumps through
it) and is what /openapi.json documents for every error response, so the
document cannot drift from what the API sends.
"""

from __future__ import annotations

import sqlite3
import traceback
import uuid

import sqlalchemy as sa
import structlog
from flask import Flask, g, jsonify
from marshmallow import Schema, fields
from werkzeug.exceptions import HTTPException, InternalServerError
from werkzeug.http import HTTP_STATUS_CODES

from booking_service.core.errors import BookingError

log = structlog.get_logger(__name__)


class ErrorBodySchema(Schema):
    code = fields.Integer(required=True, metadata={"description": "HTTP status code"})
    status = fields.String(required=True, metadata={"description": "HTTP status phrase"})
    message = fields.String(required=True, metadata={"description": "What went wrong, for a human"})
    details = fields.Dict(metadata={"description": "Per-field messages of a 422, keyed like the request body "
                                                   "(query parameters under \"query\")"})
    request_id = fields.String(required=True, metadata={"description": "Also in the X-Request-ID header"})


class ErrorSchema(Schema):
    """The one error shape of the API."""

    error = fields.Nested(ErrorBodySchema, required=True)


_ERROR_SCHEMA = ErrorSchema()


def _request_id() -> str:
    if not g.get("request_id"):
        g.request_id = str(uuid.uuid4())
    return g.request_id


def error_response(code: int, message: str, details: dict | None = None, headers: dict | None = None):
    body = {"code": code, "status": HTTP_STATUS_CODES.get(code, "Error"), "message": message,
            "request_id": _request_id()}
    if details:
        body["details"] = details
    response = jsonify(_ERROR_SCHEMA.dump({"error": body}))
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
    # The exception's own headers (Allow of a 405, Retry-After...) except its HTML content type.
    headers = {name: value for name, value in exc.get_headers() if name.lower() != "content-type"}
    headers.update(data.get("headers") or {})
    return error_response(exc.code or 500, message, details, headers)


def _domain(exc: BookingError):
    return error_response(exc.status, str(exc))


def _database_error(exc: BaseException) -> BaseException | None:
    """The database error in ``exc``'s chain, if any."""
    try:
        import psycopg

        driver_errors: tuple[type[BaseException], ...] = (sqlite3.Error, psycopg.Error)
    except ImportError:  # a SQLite-only install
        driver_errors = (sqlite3.Error,)
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (sa.exc.StatementError, *driver_errors)):
            return current
        current = current.__cause__ or current.__context__
    return None


def _log_database_error(exc: BaseException, database_error: BaseException) -> None:
    """Log what failed and where, never the values.

    SQL parameters are hidden by the engines (``hide_parameters``), but a
    driver's message can still quote the row: PostgreSQL's ``DETAIL: Failing
    row contains (...)`` holds the customer's name and e-mail. So no traceback
    text (which repeats every message in the chain) goes to the log: the error
    class, its SQLSTATE, the driver's primary message, the SQL statement
    (parameters are placeholders) and the frames.
    """
    driver = getattr(database_error, "orig", None) or database_error
    diag = getattr(driver, "diag", None)
    primary = getattr(diag, "message_primary", None) or str(driver).split("\n", 1)[0]
    frames = [f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} {frame.name}"
              for frame in traceback.extract_tb(exc.__traceback__)]
    log.error("unhandled_database_error", error=type(driver).__name__, sqlstate=getattr(driver, "sqlstate", None),
              message=primary[:300], statement=(getattr(database_error, "statement", None) or "")[:500],
              frames=frames[-12:])


def _unexpected(exc: Exception):
    database_error = _database_error(exc)
    if database_error is None:
        log.exception("unhandled_error")
    else:
        _log_database_error(exc, database_error)
    return error_response(500, InternalServerError.description)


def register(app: Flask) -> None:
    # Registered after flask-smorest's own handler, so these win.
    app.register_error_handler(HTTPException, _http)
    app.register_error_handler(BookingError, _domain)
    app.register_error_handler(Exception, _unexpected)
