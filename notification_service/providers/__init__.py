"""E-mail and push providers: a module per provider, a chain per channel (``chain.py``, ``channels.py``).

Every provider takes an ``EmailContent`` or ``PushContent`` and returns the
provider's message id, raising ``NotAccepted``, ``MaybeAccepted`` or ``PermanentError``. The
delivery id is the idempotency key everywhere: file names, ``Message-ID``,
and the ``Idempotency-Key`` HTTP header, so a resend after a crash is one
message where the provider honours it.
"""

from __future__ import annotations

from notification_service.providers.content import EmailContent, PushContent
from notification_service.providers.email_file import FileEmailProvider
from notification_service.providers.email_http import HttpEmailProvider
from notification_service.providers.http import TRANSIENT_STATUSES, parse_retry_after, scrub
from notification_service.providers.mime import build_email
from notification_service.providers.push_file import FilePushProvider
from notification_service.providers.push_http import HttpPushProvider, fcm_payload
from notification_service.providers.smtp import SmtpEmailProvider

__all__ = [
    "EmailContent", "PushContent", "FileEmailProvider", "HttpEmailProvider", "SmtpEmailProvider",
    "FilePushProvider", "HttpPushProvider", "build_email", "fcm_payload", "parse_retry_after", "scrub",
    "TRANSIENT_STATUSES",
]
