"""Errors of the booking service's domain; the API maps each to one HTTP status."""


class BookingError(Exception):
    """Root of every domain error."""

    status = 400


class NotFound(BookingError):
    """Raised when a booking id does not exist."""

    status = 404


class Conflict(BookingError):
    """Raised when a change would double-book a resource or the booking cannot change."""

    status = 409


class IdempotencyMismatch(BookingError):
    """Raised when an Idempotency-Key is reused with a different request body."""

    status = 422
