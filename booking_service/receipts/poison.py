"""What the receipts consumer dead-letters: a receipt it cannot apply, for any reason of the receipt's own.

Anyone who may publish to ``notifications.receipts`` can forge a receipt, so the
consumer trusts nothing it reads: the body is decoded within bounds and loaded
by the contract, a receipt that contradicts what the booking service knows is
refused, and an error the database raises *about the data* (a value out of
range, a NUL, a constraint) is the receipt's fault, not an outage. Only the
broker or the database being unreachable makes the consumer back off and get
the receipt again; anything else is poison: dead-lettered once, with a reason
that names fields and error classes, never values (a value may be an address).
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from marshmallow import ValidationError

import shared

#: Larger bodies are no receipt (one is about 600 bytes): dead-lettered unread.
MAX_BODY_BYTES = 64 * 1024


class Poison(ValueError):
    """Raised when a message on the receipts queue cannot be applied for a reason of its own."""


class ContractBroken(Poison):
    """Raised when a message on the receipts queue is not a valid ``notification.status``."""


class Contradiction(Poison):
    """Raised when a valid receipt contradicts what the booking service knows (another booking's notification)."""


def decode(body: bytes) -> dict:
    """A receipt as loaded by the contract; ``ContractBroken`` naming what is wrong (never the content)."""
    if len(body) > MAX_BODY_BYTES:
        raise ContractBroken(f"body of {len(body)} bytes is over {MAX_BODY_BYTES}")
    try:
        payload = json.loads(body.decode("utf-8"))
    except RecursionError:  # b"[" * 60000 is under the size limit and nests past the parser's stack
        raise ContractBroken("not JSON: nests too deep") from None
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ContractBroken(f"not JSON: {type(exc).__name__}") from None
    try:
        return shared.load_notification_status(payload)
    except ValidationError as exc:
        fields = sorted(exc.messages) if isinstance(exc.messages, dict) else ["_schema"]
        raise ContractBroken(f"breaks notification.status v1: {', '.join(map(str, fields))}") from None


#: Errors that say the database is there but refuses this data: the receipt's fault, dead-lettered
#: (PostgreSQL's DataError for 2**31 or a NUL used to be retried forever as "database unavailable").
_DATA_ERRORS = (sa.exc.DataError, sa.exc.IntegrityError)
#: Errors that say the database (or the way to it) is away or unusable: back off, the receipt comes back.
DATABASE_OUTAGE = (sa.exc.DBAPIError, sa.exc.DisconnectionError, sa.exc.TimeoutError)


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` means the database (or the network) is unreachable right now, whatever the receipt."""
    return isinstance(exc, (*DATABASE_OUTAGE, OSError)) and not isinstance(exc, _DATA_ERRORS)


def reason(exc: BaseException) -> str:
    """Why a receipt was dead-lettered, safe to log: our own reasons, else only the error's class."""
    if isinstance(exc, Poison):
        return str(exc)
    if isinstance(exc, sa.exc.StatementError) and exc.orig is not None:
        # The message of a driver error may quote the value (an address); its class and SQLSTATE never do.
        code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "sqlite_errorname", None)
        return f"the database refused it: {type(exc.orig).__name__}" + (f" ({code})" if code else "")
    return f"cannot be applied: {type(exc).__name__}"
