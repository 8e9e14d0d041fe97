"""The webhook receiver's Flask app: verify, decode, record; one JSON shape for every answer.

* unsigned, badly signed or stale → 401, nothing stored;
* a body over ``NOTIFICATION_WEBHOOK_MAX_BODY_BYTES`` → 413; not JSON → 400; not an event → 422;
* a stored event → 200 (applied, unchanged, duplicate), or 202 when no delivery has its message id;
* the database away → 503, so the provider sends the event again later.

Nothing a provider sends is logged beyond the provider, the event id, the kind and the outcome.
"""

from __future__ import annotations

import json
import time
from typing import Any

import structlog
from flask import Flask, Response, jsonify, request
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from notification_service.delivery.log import delivery_log
from notification_service.delivery.machine import utcnow
from notification_service.runtime import metrics
from notification_service.settings import Settings
from notification_service.webhooks import formats
from notification_service.webhooks.events import BadEvent, ProviderEvent
from notification_service.webhooks.record import EventRecorder, Recorded
from notification_service.webhooks.signatures import BadSignature, check_generic, check_mailgun, secrets

log = structlog.get_logger("notification_service.webhooks")

#: Deepest JSON nesting accepted (a hostile body nested 100 000 deep would otherwise hit the recursion limit).
MAX_DEPTH = 32


def _error(status: int, error: str, message: str) -> tuple[Response, int]:
    return jsonify({"error": error, "message": message}), status


def _json(body: bytes) -> Any:
    if body.count(b"[") + body.count(b"{") > 10_000:
        raise ValueError("too many nested values")
    value = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    _depth(value, 0)
    return value


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _depth(value: Any, level: int) -> None:
    if level > MAX_DEPTH:
        raise ValueError("nested too deep")
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for child in children:
        _depth(child, level + 1)


def create_app(settings: Settings) -> Flask:
    app = Flask("notification_service.webhooks")
    app.config["MAX_CONTENT_LENGTH"] = settings.webhook_max_body_bytes
    recorder = EventRecorder(delivery_log(settings.database_url))
    generic_keys, mailgun_keys = secrets(settings.webhook_secrets), secrets(settings.mailgun_signing_keys)
    tolerance = settings.webhook_tolerance_seconds

    def body() -> Any:
        return _json(request.get_data(cache=True))

    def answer(event: ProviderEvent) -> tuple[Response, int]:
        outcome = recorder.record(event, utcnow())
        metrics.WEBHOOK_EVENTS.labels(event.provider, outcome.value).inc()
        log.info("webhook event", provider=event.provider, event_id=event.event_id[:80], kind=event.kind,
                 outcome=outcome.value)
        return jsonify({"status": outcome.value}), 202 if outcome is Recorded.UNMATCHED else 200

    @app.post("/webhooks/email/http")
    def generic_event():
        raw = request.get_data(cache=True)
        check_generic(generic_keys, raw, request.headers.get("X-Signature"),
                      request.headers.get("X-Webhook-Timestamp"), now=time.time(), tolerance=tolerance)
        return answer(formats.generic(body()))

    @app.post("/webhooks/email/mailgun")
    def mailgun_event():
        data = body()
        check_mailgun(mailgun_keys, data.get("signature") if isinstance(data, dict) else None, now=time.time(),
                      tolerance=tolerance)
        event = formats.mailgun(data)
        if event is formats.IGNORED:
            metrics.WEBHOOK_EVENTS.labels(formats.MAILGUN, "ignored").inc()
            return jsonify({"status": "ignored"}), 200
        return answer(event)

    @app.get("/healthz")
    def health():
        return jsonify({"status": "ok"})

    @app.errorhandler(BadSignature)
    def unauthorised(exc: BadSignature):
        metrics.WEBHOOK_EVENTS.labels(request.path.rsplit("/", 1)[-1], "refused").inc()
        log.warning("webhook refused", path=request.path, reason=str(exc))
        return _error(401, "unauthorized", str(exc))

    @app.errorhandler(BadEvent)
    def unprocessable(exc: BadEvent):
        return _error(422, "invalid_event", str(exc))

    @app.errorhandler(ValueError)  # JSON and UTF-8 decoding errors are ValueErrors
    def bad_json(exc: ValueError):
        return _error(400, "bad_json", f"the body is not a JSON document: {type(exc).__name__}")

    @app.errorhandler(RecursionError)
    def too_deep(exc: RecursionError):
        return _error(400, "bad_json", "nested too deep")

    @app.errorhandler(SQLAlchemyError)
    def database_away(exc: SQLAlchemyError):
        log.error("webhook not stored: database error", error=type(exc).__name__)
        return _error(503, "unavailable", "the event could not be stored; send it again later")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return _error(exc.code or 500, (exc.name or "error").lower().replace(" ", "_"), exc.description or "")

    return app
