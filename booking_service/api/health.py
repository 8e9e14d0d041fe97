"""/healthz, /readyz and /metrics: open, no API key."""

from __future__ import annotations

import socket
import urllib.parse

from flask import Blueprint, Response, current_app, jsonify

from booking_service.api.context import db_session
from booking_service.receipts.stats import last_applied_age, queue_state
from booking_service.runtime import metrics
from booking_service.storage.outbox_stats import backlog
from shared.amqp_url import nodes

blp = Blueprint("health", __name__)


@blp.get("/healthz")
def healthz():
    """The process is alive."""
    return jsonify({"status": "ok"})


def _broker_reachable(url: str, timeout: float) -> bool:
    """Whether any node of ``AMQP_URL`` accepts a TCP connection (a cluster is up while one node is)."""
    for node in nodes(url):
        parts = urllib.parse.urlsplit(node)
        port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
        try:
            socket.create_connection((parts.hostname or "localhost", port), timeout=timeout).close()
            return True
        except OSError:
            continue
    return False


@blp.get("/readyz")
def readyz():
    """Ready when the database answers.

    A broker outage is reported but does not make the API unready: bookings are
    still accepted and wait in the outbox, which is the point of the outbox.
    """
    settings = current_app.config["BOOKING_SETTINGS"]
    checks: dict = {}
    try:
        checks["outbox"] = backlog(db_session())
        checks["receipts"] = {"last_applied_age_seconds": last_applied_age(db_session())}
        checks["database"] = "ok"
    except Exception as exc:  # any driver error means "not ready"; reported, not hidden
        checks["database"] = f"error: {type(exc).__name__}"
    broker_up = _broker_reachable(settings.amqp_url, settings.ready_broker_timeout_seconds)
    checks["broker"] = "ok" if broker_up else "unreachable"
    receipts_ok = True
    if checks["broker"] == "ok":
        # The receipts consumer's lag and presence. Reported, and "degraded" when nothing consumes the
        # queue or the queue is gone, but never a reason to be unready: bookings do not need receipts.
        state = queue_state(settings.amqp_url, settings.ready_broker_timeout_seconds)
        receipts = checks.setdefault("receipts", {})
        if isinstance(state, dict):
            receipts.update(state)
            receipts_ok = state["consumers"] > 0
        else:
            receipts["queue"] = state
            receipts_ok = False
    ready = checks["database"] == "ok"
    healthy = ready and checks["broker"] == "ok" and receipts_ok
    status = "ok" if healthy else ("degraded" if ready else "unavailable")
    response = jsonify({"status": status, "checks": checks})
    response.status_code = 200 if ready else 503
    return response


@blp.get("/metrics")
def metrics_endpoint():
    body, content_type = metrics.render(current_app.config["BOOKING_SESSION_FACTORY"])
    return Response(body, content_type=content_type)
