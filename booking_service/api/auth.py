"""Bearer API keys from BOOKING_API_KEYS, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac

from flask import current_app, g, request

from booking_service.api.errors import error_response


def client_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def require_api_key():
    """``before_request`` hook of the /v1 blueprints."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    keys = current_app.config["BOOKING_SETTINGS"].api_keys
    valid = False
    if scheme.lower() == "bearer" and token:
        # Compare against every key, so timing tells nothing about which one matched.
        for key in keys:
            valid |= hmac.compare_digest(token.encode(), key.encode())
    if not valid:
        message = "Missing or invalid API key: send 'Authorization: Bearer <key>'."
        return error_response(401, message, headers={"WWW-Authenticate": 'Bearer realm="bookings"'})
    g.client = client_id(token)
    return None
