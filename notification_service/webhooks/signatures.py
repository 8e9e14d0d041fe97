"""Signature checks of each webhook format; several secrets are accepted at once (a rotation).

* Generic (the project's HTTP e-mail provider): ``X-Webhook-Timestamp: <unix seconds>`` and
  ``X-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + raw body)>``. The timestamp is signed
  with the body, so a captured request cannot be replayed with a fresh one.
* Mailgun (documented at documentation.mailgun.com, "Securing webhooks"): the body's
  ``signature: {timestamp, token, signature}``, with ``signature`` the hex HMAC-SHA256 of
  ``timestamp + token`` under the webhook signing key.

Both refuse a timestamp further from now than the tolerance. Comparisons are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac


class BadSignature(Exception):
    """Raised when a request is unsigned, badly signed or too old (answered 401, nothing stored)."""


def secrets(setting: str) -> list[bytes]:
    """The secrets of a comma-separated setting (empty: none, and every request is refused)."""
    return [part.strip().encode() for part in setting.split(",") if part.strip()]


def _fresh(timestamp: str, now: float, tolerance: int) -> None:
    try:
        moment = int(timestamp)
    except (TypeError, ValueError):
        raise BadSignature("missing or malformed timestamp") from None
    if abs(now - moment) > tolerance:
        raise BadSignature("timestamp outside the tolerance")


def _matches(keys: list[bytes], message: bytes, given: str) -> bool:
    if not keys:
        raise BadSignature("no secret configured for this endpoint")
    expected = [hmac.new(key, message, hashlib.sha256).hexdigest() for key in keys]
    return any(hmac.compare_digest(candidate, given) for candidate in expected)


def check_generic(keys: list[bytes], body: bytes, signature: str | None, timestamp: str | None, *, now: float,
                  tolerance: int) -> None:
    if not signature or not signature.startswith("sha256="):
        raise BadSignature("missing X-Signature: sha256=<hex>")
    _fresh(timestamp or "", now, tolerance)
    if not _matches(keys, (timestamp or "").encode() + b"." + body, signature[len("sha256="):]):
        raise BadSignature("bad signature")


def check_mailgun(keys: list[bytes], signed: object, *, now: float, tolerance: int) -> None:
    if not isinstance(signed, dict):
        raise BadSignature("missing signature object")
    timestamp, token, signature = (signed.get(k) for k in ("timestamp", "token", "signature"))
    if not all(isinstance(v, str) and 0 < len(v) <= 200 for v in (timestamp, token, signature)):
        raise BadSignature("malformed signature object")
    _fresh(str(timestamp), now, tolerance)
    if not _matches(keys, f"{timestamp}{token}".encode(), str(signature)):
        raise BadSignature("bad signature")
