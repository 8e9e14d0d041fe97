"""What the HTTP providers share: one ``requests.Session`` per thread, timeouts, error classification.

A session per pool thread keeps a provider's connections alive between sends
(``requests.Session`` is not documented as thread-safe, so threads never share
one). Connect and read timeouts are separate: a provider that does not answer
the handshake is given up on sooner than one that is slow to respond.
"""

from __future__ import annotations

import email.utils
import json
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError

from notification_service.errors import AddressGone, MaybeAccepted, NotAccepted, PermanentError
from notification_service.runtime import metrics

#: HTTP statuses worth retrying.
TRANSIENT_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
#: Seconds to establish a connection (the read timeout is NOTIFICATION_HTTP_TIMEOUT).
CONNECT_TIMEOUT = 3.05


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or HTTP date); None when absent/unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def scrub(text: str, *personal: str) -> str:
    """``text`` without any of ``personal`` (addresses or tokens), also in their JSON-escaped forms."""
    forms = {form for value in personal if value
             for form in (value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1])}
    if not forms:
        return text
    pattern = "|".join(re.escape(form) for form in sorted(forms, key=len, reverse=True))
    return re.sub(pattern, "<recipient>", text, flags=re.IGNORECASE)  # \u00F6 as well as \u00f6


def unsent(exc: requests.RequestException) -> bool:
    """True when the request certainly never reached the provider: refused, DNS failure, connect timeout, TLS.

    A read timeout or a connection dropped after the request went out may have left the message there.
    """
    if isinstance(exc, requests.ConnectTimeout | requests.exceptions.SSLError):
        return True
    if not isinstance(exc, requests.ConnectionError) or isinstance(exc, requests.ReadTimeout):
        return False
    reason = exc.args[0] if exc.args else None
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    # NameResolutionError is a NewConnectionError: the socket never connected.
    return isinstance(reason, NewConnectionError | ConnectTimeoutError)


class HttpClient:
    """POSTs JSON to one provider endpoint with per-thread keep-alive sessions."""

    def __init__(self, url: str, *, token: str, timeout: float, kind: str,
                 gone: Callable[[requests.Response], bool] | None = None) -> None:
        self.url = url
        #: Tells an answer that says the address or token no longer exists (raised as ``AddressGone``).
        self.gone = gone
        self.token = token
        self.timeout = (min(CONNECT_TIMEOUT, timeout), timeout)
        self.kind = kind
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0))
            session.mount("https://", HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0))
            if self.token:
                session.headers["Authorization"] = f"Bearer {self.token}"
            self._local.session = session
        return session

    def post(self, payload: dict, *, key: str, personal: str | tuple[str, ...]) -> str:
        """POST ``payload``; return the provider's message id. ``personal`` (one or more) is scrubbed from errors."""
        started = time.perf_counter()
        try:
            response = self._session().post(self.url, json=payload, headers={"Idempotency-Key": key},
                                            timeout=self.timeout)
        except (requests.Timeout, requests.ConnectionError) as exc:
            if unsent(exc):
                raise NotAccepted(f"{self.kind} provider unreachable: {type(exc).__name__}") from exc
            raise MaybeAccepted(f"{self.kind} provider did not answer: {type(exc).__name__}") from exc
        finally:
            metrics.PROVIDER_LATENCY.labels(self.kind).observe(time.perf_counter() - started)
        if response.status_code in TRANSIENT_STATUSES:
            raise NotAccepted(f"{self.kind} provider answered {response.status_code}",
                              retry_after=parse_retry_after(response.headers.get("Retry-After")),
                              status=response.status_code)
        if response.status_code >= 400:
            detail = scrub(response.text, *((personal,) if isinstance(personal, str) else personal))[:200]
            if self.gone is not None and self.gone(response):
                raise AddressGone(f"{self.kind} provider answered {response.status_code} (address gone): {detail}")
            raise PermanentError(f"{self.kind} provider answered {response.status_code}: {detail}")
        try:
            body = response.json()
        except ValueError:
            body = {}
        if isinstance(body, dict):
            return str(body.get("name") or body.get("id") or body.get("message_id") or key)
        return key
