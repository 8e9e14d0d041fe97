"""An RFC 5322 e-mail built once, cheaply, as bytes.

The stdlib ``EmailMessage`` (header registry, policy objects, generator) cost
~4 ms per message, a quarter of the worker's CPU; this writes the same
``multipart/alternative`` message directly: ASCII headers as they are,
others RFC 2047-encoded and folded (RFC 5322: CRLF and a space between encoded
words, every line within 78 characters), both bodies quoted-printable UTF-8. Header values may not
contain CR or LF (header injection): such a message is refused permanently.

Addresses go out in ASCII: an international domain in its IDNA form
(``shared.ascii_email``), which every server and API takes. An address that
has none (a non-ASCII local part needs SMTPUTF8 on every hop; the contract
refuses it) is a permanent error, never an encoding exception: that was
retried nine times, and its text carried the address into logs and the
dead-letter reason.
"""

from __future__ import annotations

import binascii
import email.utils
from email.header import Header

from notification_service.errors import PermanentError
from notification_service.providers.content import EmailContent
from shared.messages import ascii_email


def valid_address(address: str) -> bool:
    if "\n" in address or "\r" in address:
        return False
    _name, addr = email.utils.parseaddr(address)
    return bool(addr) and "@" in addr


def deliverable(address: str, role: str = "recipient") -> str:
    """The bare ``address`` (display name dropped) as it goes on the wire; PermanentError (address-free) if none."""
    if not valid_address(address):
        raise PermanentError(f"invalid {role} e-mail address")
    try:
        return ascii_email(email.utils.parseaddr(address)[1])
    except ValueError as exc:
        raise PermanentError(f"undeliverable {role} e-mail address: {exc}") from None


#: Longest header line RFC 5322 recommends (SHOULD), CRLF excluded; ``Header`` folds at 76.
MAX_LINE = 78


def _encoded_words(name: str, value: str) -> str:
    """``value`` as RFC 2047 encoded words, folded with CRLF (``Header`` folds with a bare LF by default)."""
    return Header(value, "utf-8", header_name=name).encode(linesep="\r\n")


def _header(name: str, value: str) -> bytes:
    if "\r" in value or "\n" in value:
        raise PermanentError(f"header {name} contains a line break")
    if value.isascii():
        return f"{name}: {value}\r\n".encode("ascii")
    return f"{name}: {_encoded_words(name, value)}\r\n".encode("ascii")


def _address(name: str, value: str, role: str) -> bytes:
    """An address header: a non-ASCII display name is RFC 2047-encoded, the address is ``deliverable``'s."""
    if "\r" in value or "\n" in value:
        raise PermanentError(f"header {name} contains a line break")
    display, address = email.utils.parseaddr(value)[0], deliverable(value, role)
    if display.isascii():
        return f"{name}: {email.utils.formataddr((display, address))}\r\n".encode("ascii")
    # formataddr writes one encoded word however long the name: 200 emoji made a line over
    # SMTP's 998-character limit. Folded encoded words are a phrase as well.
    phrase = f"{name}: {_encoded_words(name, display)}"
    # The address goes on a line of its own when it would take the last one past 78 characters.
    fold = " " if len(phrase.rpartition("\r\n")[2]) + len(address) + 3 <= MAX_LINE else "\r\n "
    return f"{phrase}{fold}<{address}>\r\n".encode("ascii")


def _part(subtype: str, body: str) -> bytes:
    # Quoted-printable (binascii's C encoder): readable where the text is ASCII, safe for the rest.
    encoded = binascii.b2a_qp(body.replace("\r\n", "\n").encode("utf-8")).replace(b"\n", b"\r\n")
    return (f"Content-Type: text/{subtype}; charset=\"utf-8\"\r\nContent-Transfer-Encoding: quoted-printable"
            "\r\n\r\n".encode() + encoded + b"\r\n")


def build_email(content: EmailContent, sender: str) -> tuple[bytes, str]:
    """``(message bytes, Message-ID)``; raises PermanentError for an invalid recipient or header."""
    to = _address("To", content.to, "recipient")
    sender_header = _address("From", sender, "sender (EMAIL_FROM)")
    domain = deliverable(sender, "sender (EMAIL_FROM)").rpartition("@")[2]
    message_id = f"<{content.delivery_id}@{domain}>"
    boundary = f"=_{content.delivery_id}"
    headers = [
        sender_header, to, _header("Subject", content.subject),
        _header("Date", email.utils.formatdate(usegmt=True)), _header("Message-ID", message_id),
        b"MIME-Version: 1.0\r\n",
        *(_header(key, str(value)) for key, value in sorted(content.headers.items())),
        f"Content-Type: multipart/alternative; boundary=\"{boundary}\"\r\n\r\n".encode(),
    ]
    delimiter = f"--{boundary}\r\n".encode()
    body = [delimiter, _part("plain", content.text), delimiter, _part("html", content.html),
            f"--{boundary}--\r\n".encode()]
    return b"".join(headers + body), message_id
