"""``create_app(settings)``: the booking API. No I/O happens at import time."""

from __future__ import annotations

import time
import uuid

import structlog
from flask import Flask, abort, g, request
from flask_smorest import Api

from booking_service.api import errors, openapi
from booking_service.api.bookings import blp as bookings_blp
from booking_service.api.docs import blp as docs_blp
from booking_service.api.health import blp as health_blp
from booking_service.api.notifications import blp as notifications_blp
from booking_service.runtime import logs, metrics
from booking_service.settings import Settings
from booking_service.storage.db import make_engine, make_session_factory

log = structlog.get_logger(__name__)
REQUEST_ID_HEADER = "X-Request-ID"


class BookingApi(Api):
    """flask-smorest's Api documenting the API's own error shape (``errors.ErrorSchema``)."""

    ERROR_SCHEMA = errors.ErrorSchema


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings if settings is not None else Settings.from_env()
    logs.configure(settings.log_format, settings.log_level)
    app = Flask(__name__)
    # werkzeug answers "/v1//bookings" with a 308 to an absolute URL built from the Host header
    # (an open redirect to whatever host a client names) and an HTML body: a path is the API's or a 404.
    app.url_map.merge_slashes = False
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

    api = BookingApi(app, spec_kwargs={"extra_plugins": [openapi.ApiConventions()]})
    openapi.register_components(api.spec)
    api.register_blueprint(bookings_blp)
    api.register_blueprint(notifications_blp)
    app.register_blueprint(health_blp)
    app.register_blueprint(docs_blp)
    errors.register(app)
    _request_context(app)
    return app


def _request_context(app: Flask) -> None:
    metrics_port = app.config["BOOKING_SETTINGS"].metrics_port

    @app.before_request
    def _begin():
        g.started = time.perf_counter()
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = incoming if 0 < len(incoming) <= 200 and incoming.isprintable() else str(uuid.uuid4())
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=g.request_id)
        if metrics_port is not None:
            # /metrics on its own listener only; that listener serves nothing else.
            on_metrics_port = metrics.listener_port(request.environ) == metrics_port
            if on_metrics_port != (request.path == "/metrics"):
                abort(404)

    @app.after_request
    def _finish(response):
        # Fixed label values only: a label taken from the request (any method name,
        # any path) would add a series per distinct value, without bound.
        route = request.url_rule.rule if request.url_rule else "unmatched"
        method = metrics.method_label(request.method)
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        metrics.http_requests().labels(method, route, str(response.status_code)).inc()
        metrics.http_latency().labels(method, route).observe(elapsed)
        response.headers[REQUEST_ID_HEADER] = g.get("request_id", "")
        # Answers carry data from outside (a receipt's reason, a booking's notes): no browser may sniff them as HTML.
        response.headers["X-Content-Type-Options"] = "nosniff"
        if route not in ("/healthz", "/metrics"):
            log.info("request", method=request.method, route=route, status=response.status_code,
                     duration_ms=round(elapsed * 1000, 2))
        return response

    @app.teardown_request
    def _close(_exc):
        session = g.pop("session", None)
        if session is not None:
            session.close()
