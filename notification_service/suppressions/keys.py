"""How an address is keyed on the suppression list: SHA-256 of the channel and the normalised address.

Why a plain SHA-256 and not an HMAC with a secret: the delivery log already keeps every address in
clear (``deliveries.address``, the dedupe key), so a key would hide nothing from someone who reads
the database, while a lost or rotated key would silently empty the list. What the hash buys is that
the list itself, its CLI output and its logs never hold or show an address: an operator sees a hash
prefix, and the masked address when the CLI was given it.
"""

from __future__ import annotations

import hashlib

from shared.names import CHANNEL_EMAIL, CHANNEL_PUSH

#: Characters of the hash the CLI shows (enough to tell entries apart, as a git short hash does).
SHOWN_PREFIX = 12


def normalise(channel: str, address: str) -> str:
    """E-mail: trimmed and lower-cased (``Ada@`` suppressed with ``ada@`` errs on the safe side).

    Push: without whitespace.
    """
    if channel == CHANNEL_EMAIL:
        return address.strip().lower()
    return "".join(address.split())


def address_hash(channel: str, address: str) -> str:
    """The 64 hex characters that stand for ``address`` on ``channel`` in ``suppressions.address_hash``."""
    return hashlib.sha256(f"{channel}:{normalise(channel, address)}".encode()).hexdigest()


def content_hash(content) -> str:
    """The suppression key of what a provider is about to be given (``EmailContent`` or ``PushContent``)."""
    token = getattr(content, "token", None)
    if token is not None:
        return address_hash(CHANNEL_PUSH, token)
    return address_hash(CHANNEL_EMAIL, content.to)
