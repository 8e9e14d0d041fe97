"""Exception root of the notification service and the transient/permanent split."""

from __future__ import annotations


class NotificationError(Exception):
    """Root of every error this package raises on purpose."""


class TransientError(NotificationError):
    """Worth retrying later (timeouts, connection errors, 408, 429, 5xx)."""

    def __init__(self, message: str, retry_after: float | None = None, *, status: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        #: The HTTP status the provider answered, if it answered (429: slow down for everyone).
        self.status = status


class PermanentError(NotificationError):
    """Retrying cannot help (other 4xx, invalid address, template error): dead-letter it."""


class AddressGone(PermanentError):
    """Raised when the provider says the address or token no longer exists (FCM ``UNREGISTERED``).

    The delivery is recorded dead like any permanent failure, and its channel and address are put on the
    suppression list in the same transaction: later sends to it are recorded ``suppressed``.
    """


class ContractViolation(PermanentError):
    """A message that breaks the contract (payload or task arguments): dead-letter it at once."""


class NotAccepted(TransientError):
    """Raised when the provider certainly did not take the message (refused, 408/429/5xx, SMTP error before DATA).

    Another provider of the channel may be tried at once: no duplicate can follow.
    """


class MaybeAccepted(TransientError):
    """Raised when the provider may have taken the message (a read timeout, a drop after sending, SMTP in DATA).

    Never failed over: the retry goes to the same provider (``provider``) with the same idempotency key.
    """

    def __init__(self, message: str, retry_after: float | None = None, provider: str | None = None) -> None:
        super().__init__(message, retry_after)
        self.provider = provider


class RateLimited(TransientError):
    """Raised when a provider's next free send slot (its rate limit) is further away than a worker may wait.

    No provider was called: the chain tries the next provider, and the attempt is not counted.
    """


class ChannelUnavailable(TransientError):
    """Raised when every provider of a channel refused the call on its open breaker: no provider was called.

    ``retry_in``: seconds until the earliest of those breakers lets a probe through (also ``retry_after``).
    """

    def __init__(self, channel: str, retry_in: float) -> None:
        super().__init__(f"every {channel} provider's breaker is open", retry_after=retry_in)
        self.channel = channel
        self.retry_in = retry_in
