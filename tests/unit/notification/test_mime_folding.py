"""Long non-ASCII headers are folded the RFC 5322 way: CRLF and a space, short lines, read back exactly."""

from __future__ import annotations

import email
import email.policy
import email.utils
from email.header import decode_header, make_header

from notification_service.providers.content import EmailContent
from notification_service.providers.mime import build_email

#: 200 characters, none of them ASCII letters only: every one needs an encoded word.
SUBJECT = ("Bestätigung für Raum Ω — 予約確認 🎉 " * 10)[:200]
NAME = "🎉" * 200  # 800 bytes of UTF-8: one encoded word of it was a line of over 1,000 characters


def message(subject: str = SUBJECT, to: str = "Zoë Müller <zoe@example.org>") -> bytes:
    content = EmailContent(delivery_id="d-fold", to=to, subject=subject, text="Grüße", html="<p>Grüße</p>")
    return build_email(content, "Bookings <bookings@example.org>")[0]


def header_lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def test_a_long_non_ascii_subject_is_folded_with_crlf_and_read_back_exactly():
    data = message()

    assert len(SUBJECT) == 200
    assert b"\n" not in data.replace(b"\r\n", b"")  # every line ends in CRLF: no bare LF
    assert b"\r" not in data.replace(b"\r\n", b"")
    subject_lines = [line for line in header_lines(data) if line.startswith((b"Subject:", b" "))]
    assert len(subject_lines) > 1 and all(line.startswith(b" ") for line in subject_lines[1:])
    assert all(len(line) <= 78 for line in header_lines(data))
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert parsed["Subject"] == SUBJECT


def test_a_long_non_ascii_display_name_is_folded_and_read_back_exactly():
    data = message(to=f"{NAME} <zoe@example.org>")

    assert all(len(line) <= 78 for line in header_lines(data))
    # RFC 2047's decoder: the whitespace between encoded words is no part of the name. (The stdlib's
    # newer address parser keeps a space there, which mail clients do not.)
    name, address = email.utils.parseaddr(email.message_from_bytes(data)["To"])
    assert (str(make_header(decode_header(name))), address) == (NAME, "zoe@example.org")
