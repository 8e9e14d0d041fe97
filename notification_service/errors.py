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


class ContractViolation(PermanentError):
    """A message that breaks the contract (payload or task arguments): dead-letter it at once."""
