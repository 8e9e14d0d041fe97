"""SMTP (stdlib ``smtplib``): STARTTLS, AUTH, one kept-alive connection per pool thread.

Reusing a connection is safe only before the message's data has been handed
over: a server that closed an idle connection fails ``MAIL FROM``, and then
the message is sent once more over a fresh connection. A failure during or
after ``DATA`` is never repeated here (the server may have taken the
message): it is ``MaybeAccepted`` (retried on this provider, never failed over),
while a failure before ``DATA`` is ``NotAccepted`` (another provider may take it).
The envelope addresses are the ASCII forms ``mime.deliverable`` gives (an
international domain in IDNA), the same the message's headers carry.
"""

from __future__ import annotations

import smtplib
import ssl
import threading
import time

from notification_service.errors import MaybeAccepted, NotAccepted, PermanentError
from notification_service.providers.content import EmailContent
from notification_service.providers.mime import build_email, deliverable
from notification_service.runtime import metrics
from notification_service.settings import Settings


class SmtpEmailProvider:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._local = threading.local()

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        smtp = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout)
        try:
            if s.smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
            if s.smtp_username:
                smtp.login(s.smtp_username, s.smtp_password)
        except BaseException:
            smtp.close()
            raise
        return smtp

    def _drop(self) -> None:
        smtp = getattr(self._local, "smtp", None)
        self._local.smtp = None
        if smtp is not None:
            try:
                smtp.close()
            except OSError:
                return  # already gone; nothing else to release

    def _transfer(self, smtp: smtplib.SMTP, content: EmailContent, data: bytes, *, reused: bool) -> None:
        sender, recipient = deliverable(self.settings.email_from, "sender (EMAIL_FROM)"), deliverable(content.to)
        try:
            code, reply = smtp.mail(sender)
        except (smtplib.SMTPServerDisconnected, OSError):
            if not reused:
                raise
            self._drop()  # an idle connection the server closed: nothing was handed over yet
            smtp = self._local.smtp = self._connect()
            code, reply = smtp.mail(sender)
        if code != 250:
            smtp.rset()
            raise smtplib.SMTPSenderRefused(code, reply, sender)
        code, reply = smtp.rcpt(recipient)
        if code not in (250, 251):
            smtp.rset()
            raise smtplib.SMTPRecipientsRefused({recipient: (code, reply)})
        # From here on the server may have the message (see ``send``).
        self._local.in_data = True
        code, reply = smtp.data(data)
        if code != 250:
            raise smtplib.SMTPDataError(code, reply)

    def send(self, content: EmailContent) -> str:
        data, message_id = build_email(content, self.settings.email_from)
        started = time.perf_counter()
        self._local.in_data = False
        try:
            smtp = getattr(self._local, "smtp", None)
            reused = smtp is not None
            if smtp is None:
                smtp = self._local.smtp = self._connect()
            self._transfer(self._local.smtp, content, data, reused=reused)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            if all(500 <= code < 600 for code in codes):
                raise PermanentError(f"SMTP refused recipient: {codes}") from exc
            raise NotAccepted(f"SMTP refused recipient temporarily: {codes}") from exc
        except smtplib.SMTPAuthenticationError as exc:
            self._drop()
            raise NotAccepted(f"SMTP authentication failed ({exc.smtp_code})") from exc
        except smtplib.SMTPResponseException as exc:
            if 500 <= exc.smtp_code < 600:
                raise PermanentError(f"SMTP error {exc.smtp_code}") from exc
            self._drop()
            raise self._transient(f"SMTP error {exc.smtp_code}") from exc
        except UnicodeError as exc:
            # smtplib writes commands in ASCII; retrying cannot change the text (and its repr holds it).
            self._drop()
            raise PermanentError(f"SMTP command not encodable: {type(exc).__name__}") from None
        except (TimeoutError, smtplib.SMTPException, OSError) as exc:
            self._drop()
            raise self._transient(f"SMTP unavailable: {type(exc).__name__}") from exc
        finally:
            metrics.PROVIDER_LATENCY.labels("smtp").observe(time.perf_counter() - started)
        return message_id

    def _transient(self, message: str) -> NotAccepted | MaybeAccepted:
        """Before ``DATA`` the server certainly has nothing; during or after it, it may have the message."""
        return MaybeAccepted(message) if getattr(self._local, "in_data", False) else NotAccepted(message)
