"""E-mail and push providers behind one Protocol (``delivery.Provider``): a module per provider.

Every provider takes an ``EmailContent`` or ``PushContent`` and returns the
provider's message id, raising ``TransientError`` or ``PermanentError``. The
delivery id is the idempotency key everywhere: file names, ``Message-ID``,
and the ``Idempotency-Key`` HTTP header, so a resend after a crash is one
message where the provider honours it.
"""

from __future__ import annotations

import threading

from notification_service.providers.content import EmailContent, PushContent
from notification_service.providers.email_file import FileEmailProvider
from notification_service.providers.email_http import HttpEmailProvider
from notification_service.providers.http import TRANSIENT_STATUSES, parse_retry_after, scrub
from notification_service.providers.mime import build_email
from notification_service.providers.push_file import FilePushProvider
from notification_service.providers.push_http import HttpPushProvider, fcm_payload
from notification_service.providers.rate_limited import rate_limited
from notification_service.providers.smtp import SmtpEmailProvider
from notification_service.settings import Settings

__all__ = [
    "EmailContent", "PushContent", "FileEmailProvider", "HttpEmailProvider", "SmtpEmailProvider",
    "FilePushProvider", "HttpPushProvider", "build_email", "fcm_payload", "parse_retry_after", "scrub",
    "TRANSIENT_STATUSES", "email_provider", "push_provider",
]

EMAIL_PROVIDERS = {"file": FileEmailProvider, "smtp": SmtpEmailProvider, "http": HttpEmailProvider}
PUSH_PROVIDERS = {"file": FilePushProvider, "http": HttpPushProvider}
#: (channel, backend) → the provider's name in ``provider_rates`` and its metrics.
PROVIDER_NAMES = {("email", "http"): "email_http", ("email", "smtp"): "smtp", ("push", "http"): "push_http"}

_instances: dict[tuple[str, Settings], object] = {}
_lock = threading.Lock()


def _provider(kind: str, registry: dict, backend: str, settings: Settings):
    """One provider per process and settings (its per-thread connections outlive a single send), behind its
    rate limit when it has one."""
    key = (kind, settings)
    with _lock:
        if key not in _instances:
            name = PROVIDER_NAMES.get((kind, backend), f"{kind}_{backend}")
            _instances[key] = rate_limited(name, registry[backend](settings), settings)
        return _instances[key]


def email_provider(settings: Settings):
    return _provider("email", EMAIL_PROVIDERS, settings.email_backend, settings)


def push_provider(settings: Settings):
    return _provider("push", PUSH_PROVIDERS, settings.push_backend, settings)
