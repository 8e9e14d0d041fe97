"""``create_app(settings)``: the booking API. No I/O happens at import time."""

from __future__ import annotations

import time
import uuid

import structlog
from flask import Flask, g, request
from flask_smorest import Api

from . import logs, metrics
from .api import errors
from .api.bookings import blp as bookings_blp
from .api.docs import blp as docs_blp
from .api.health import blp as health_blp
from .api.notifications import blp as notifications_blp
from .config import Settings
from .db import make_engine, make_session_factory

log = structlog.get_logger(__name__)
REQUEST_ID_HEADER = "X-Request-ID"


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    logs.configure(settings.log_format, settings.log_level)
    app = Flask(__name__)
    app.config.update(
        BOOKING_SETTINGS=settings,
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        API_TITLE="Booking service",
        API_VERSION="v1",
        OPENAPI_VERSION="3.1.0",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        API_SPEC_OPTIONS={
            "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearer": []}],
        },
    )
    engine = make_engine(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous)
    session_factory = make_session_factory(engine)
    app.config["BOOKING_SESSION_FACTORY"] = session_factory
    app.extensions["booking_engine"] = engine

    api = Api(app)
    api.register_blueprint(bookings_blp)
    api.register_blueprint(notifications_blp)
    app.register_blueprint(health_blp)
    app.register_blueprint(docs_blp)
    errors.register(app)
    _request_context(app)
    return app


def _request_context(app: Flask) -> None:
    @app.before_request
    def _begin():
        g.started = time.perf_counter()
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = incoming if 0 < len(incoming) <= 200 and incoming.isprintable() else str(uuid.uuid4())
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=g.request_id)

    @app.after_request
    def _finish(response):
        route = request.url_rule.rule if request.url_rule else "unmatched"
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        metrics.http_requests().labels(request.method, route, str(response.status_code)).inc()
        metrics.http_latency().labels(request.method, route).observe(elapsed)
        response.headers[REQUEST_ID_HEADER] = g.get("request_id", "")
        if route not in ("/healthz", "/metrics"):
            log.info("request", method=request.method, route=route, status=response.status_code,
                     duration_ms=round(elapsed * 1000, 2))
        return response

    @app.teardown_request
    def _close(_exc):
        session = g.pop("session", None)
        if session is not None:
            session.close()
