"""structlog set-up: JSON in production, console otherwise, correlation id on every line."""

from __future__ import annotations

import logging
import sys

import structlog
from structlog.typing import Processor

from notification_service.settings import Settings

#: Celery's per-task lines ("Task … received", "… succeeded"): two INFO lines per task that
#: repeat what our own lines say. Shown at DEBUG only.
CHATTY_LOGGERS = ("celery.worker.strategy", "celery.app.trace")


def configure(log_format: str | None = None, level: int | str | None = None) -> None:
    """Configure structlog and route stdlib logging (Celery's) through the same renderer.

    Left out, ``log_format`` and ``level`` are NOTIFICATION_LOG_FORMAT and
    NOTIFICATION_LOG_LEVEL. The worker passes its ``--loglevel`` (Celery hands it over),
    so ``-l WARNING`` really silences the INFO lines.
    """
    if log_format is None or level is None:
        settings = Settings.from_env()
        log_format = settings.log_format if log_format is None else log_format
        level = settings.log_level if level is None else level
    renderer: Processor = (structlog.processors.JSONRenderer() if log_format == "json"
                           else structlog.dev.ConsoleRenderer(colors=False))
    shared_processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        # filter_by_level first: a line below the level costs a method call, not four processors.
        processors=[structlog.stdlib.filter_by_level, *shared_processors,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    # JSON lines carry the traceback as an "exception" string (without this, only "exc_info": true);
    # the console renderer prints tracebacks itself.
    exceptions = [structlog.processors.format_exc_info] if log_format == "json" else []
    formatter = structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *exceptions, renderer],
        foreign_pre_chain=shared_processors,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    numeric = logging.getLevelName(level) if isinstance(level, str) else level
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if numeric == logging.DEBUG else max(logging.WARNING, numeric))


def get_logger(name: str):
    return structlog.get_logger(name)
