"""structlog set-up: JSON lines in production, readable lines in development.

The request id is bound with contextvars, so every line of a request carries
it; the same id travels as the message's correlation id.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure(log_format: str = "console", level: str = "INFO") -> None:
    renderer = structlog.processors.JSONRenderer() if log_format == "json" else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
