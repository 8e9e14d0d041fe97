"""/metrics label values come from fixed sets: no request can add a series of its own."""

from __future__ import annotations

import re

from booking_service.api.app import create_app
from booking_service.settings import Settings
from tests.booking.fixtures import AUTH

MADE_UP = ["QHWIJGUUDKTU", "XYZZY", "PROPFIND", "BREW"]


def test_made_up_methods_and_routes_are_counted_as_other_and_unmatched(client):
    for method in MADE_UP:
        client.open("/x", method=method)
        client.open("/v1/bookings", method=method, headers=AUTH)
        client.open(f"/{method.lower()}/{method}", method="GET")
    text = client.get("/metrics").data.decode()
    for method in MADE_UP:
        assert method not in text and method.lower() not in text
    assert re.search(r'booking_http_requests_total\{method="other",route="unmatched",status="40[45]"\}', text)
    methods = set(re.findall(r'booking_http_requests_total\{method="([^"]+)"', text))
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
    routes = set(re.findall(r'booking_http_requests_total\{[^}]*route="([^"]+)"', text))
    assert "/x" not in routes and not any("qhwij" in r for r in routes)


def test_with_a_metrics_bind_the_app_serves_no_metrics_where_it_cannot_tell_the_port(settings):
    app = create_app(Settings(**{**settings.__dict__, "metrics_bind": "127.0.0.1:9109"}))
    try:
        response = app.test_client().get("/metrics")  # the test client has no socket: the API port, as far as it knows
        assert response.status_code == 404 and response.json["error"]["code"] == 404
    finally:
        app.extensions["booking_engine"].dispose()
