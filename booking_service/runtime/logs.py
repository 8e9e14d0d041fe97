"""structlog set-up: JSON lines in production, readable lines in development.

The request id is bound with contextvars, so every line of a request carries
it; the same id travels as the message's correlation id.
"""

from __future__ import annotations

import logging
import sys

import structlog

from booking_service.settings import LogFormat, LogLevel

RENDERERS = {"json": structlog.processors.JSONRenderer, "console": structlog.dev.ConsoleRenderer}


class _Stderr:
    """``sys.stderr`` as it is when a line is written, not as it was when logging was configured.

    structlog's configuration is process-wide: a stream captured at configure time outlives
    whoever swapped ``sys.stderr`` (a test's capture), and every later line, from any thread,
    then failed with "I/O operation on closed file".
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(log_format: LogFormat = "console", level: LogLevel = "INFO") -> None:
    # Refused rather than defaulted: a misspelt "jsn" used to give console lines that the
    # log pipeline could not parse, and nobody noticed (Settings checks the variables first).
    if log_format not in RENDERERS:
        raise ValueError(f"log format must be one of {sorted(RENDERERS)}, got {log_format!r}")
    number = logging.getLevelNamesMapping().get(level.upper())
    if number is None:
        raise ValueError(f"unknown log level {level!r}")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            RENDERERS[log_format](),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=structlog.PrintLoggerFactory(_Stderr()),  # type: ignore[arg-type]  # a TextIO in all it uses
        cache_logger_on_first_use=False,
    )
