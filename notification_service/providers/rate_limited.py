"""A provider behind its rate limit: every send takes a slot first, and a 429 slows every sender down.

``EMAIL_HTTP_RATE_LIMIT``, ``SMTP_RATE_LIMIT`` and ``PUSH_HTTP_RATE_LIMIT`` are
sends per second across all worker processes (``rate_limit.py`` says how);
``0`` is no limit, and then the provider is used as it is: no database write.
"""

from __future__ import annotations

import threading
from typing import Any

import structlog

from notification_service.delivery.log import delivery_log
from notification_service.errors import TransientError
from notification_service.providers.rate_limit import RateLimiter
from notification_service.runtime import metrics
from notification_service.settings import Settings

log = structlog.get_logger("notification_service.providers.rate_limited")

#: Pause after a 429 that names no ``Retry-After``, seconds.
DEFAULT_PAUSE_SECONDS = 1.0
#: HTTP 429 Too Many Requests.
TOO_MANY_REQUESTS = 429


class RateLimitedProvider:
    """``provider`` (the ``send(content) -> str`` protocol) sending at most ``rate`` per second as ``name``."""

    def __init__(self, name: str, provider: Any, limiter: RateLimiter, rate: float, burst: int = 1) -> None:
        self.name = name
        self.provider = provider
        self.limiter = limiter
        self.rate = rate
        self.burst = burst

    def send(self, content) -> str:
        if self.rate > 0:
            self.limiter.acquire(self.name, self.rate, self.burst)
        try:
            return self.provider.send(content)
        except TransientError as exc:
            if exc.status == TOO_MANY_REQUESTS:
                metrics.PROVIDER_THROTTLED.labels(self.name).inc()
                pause = exc.retry_after or DEFAULT_PAUSE_SECONDS
                log.warning("provider answered 429; every sender pauses", provider=self.name, seconds=pause)
                if self.rate > 0:
                    self.limiter.slow_down(self.name, pause)
            raise


_limiters: dict[tuple[str, float], RateLimiter] = {}
_lock = threading.Lock()


def rate_limiter(settings: Settings) -> RateLimiter:
    """The process's limiter on the delivery log's database (its write lock is the SQLite turn-taking)."""
    key = (settings.database_url, settings.rate_limit_max_wait)
    with _lock:
        if key not in _limiters:
            _limiters[key] = RateLimiter(delivery_log(settings.database_url).writes, settings.rate_limit_max_wait)
        return _limiters[key]


def rate_of(name: str, settings: Settings) -> float:
    """The configured sends per second of provider ``name``; 0 = unlimited (file sinks always)."""
    rates = {"email_http": settings.email_http_rate_limit, "email_smtp": settings.smtp_rate_limit,
             "push_http": settings.push_http_rate_limit}
    return rates.get(name, 0.0)


def rate_limited(name: str, provider: Any, settings: Settings) -> Any:
    """``provider`` behind its configured rate limit, or itself when it has none."""
    rate = rate_of(name, settings)
    if rate <= 0:
        return provider
    return RateLimitedProvider(name, provider, rate_limiter(settings), rate)
