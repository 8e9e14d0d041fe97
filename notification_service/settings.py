"""Settings of the notification service, read from environment variables only.

Nothing here opens a connection; ``Settings.from_env()`` is called by the
app factory and the CLI, never at import time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

#: Default SQLite file of the delivery log (relative to the working directory).
DEFAULT_DATABASE_URL = "sqlite:///var/notification.db"
DEFAULT_AMQP_URL = "amqp://guest:guest@localhost:5672//"


class ConfigError(ValueError):
    """An environment variable holds a value the service cannot use."""


def _bool(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"{name} must be a boolean (true/false), got {value!r}")


def _num(env: Mapping[str, str], name: str, default: float, cast=float):
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return cast(default)
    try:
        return cast(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from exc


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = (env.get(name) or default).strip().lower()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


@dataclass(frozen=True)
class Settings:
    amqp_url: str = DEFAULT_AMQP_URL
    database_url: str = DEFAULT_DATABASE_URL
    email_backend: str = "file"
    email_file_dir: str = "var/outbox/email"
    email_from: str = "bookings@example.org"
    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_username: str = ""
    smtp_password: str = field(default="", repr=False)
    smtp_starttls: bool = False
    smtp_timeout: float = 10.0
    email_http_url: str = ""
    email_http_token: str = field(default="", repr=False)
    push_backend: str = "file"
    push_file_dir: str = "var/outbox/push"
    push_http_url: str = ""
    push_http_token: str = field(default="", repr=False)
    http_timeout: float = 10.0
    max_retries: int = 8
    lease_seconds: float = 60.0
    stall_check_seconds: float = 15.0
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 900.0
    task_soft_time_limit: float = 60.0
    task_time_limit: float = 90.0
    metrics_port: int = 9808
    log_format: str = "console"
    #: Every worker process publishes the delivery receipts outbox (``receipts.py``).
    receipts_publisher: bool = True
    receipts_poll_seconds: float = 1.0
    receipts_batch_size: int = 100
    receipts_max_backoff_seconds: float = 3.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        settings = cls(
            amqp_url=env.get("AMQP_URL") or DEFAULT_AMQP_URL,
            database_url=env.get("NOTIFICATION_DATABASE_URL") or DEFAULT_DATABASE_URL,
            email_backend=_choice(env, "EMAIL_BACKEND", "file", ("file", "smtp", "http")),
            email_file_dir=env.get("EMAIL_FILE_DIR") or "var/outbox/email",
            email_from=env.get("EMAIL_FROM") or "bookings@example.org",
            smtp_host=env.get("SMTP_HOST") or "localhost",
            smtp_port=_num(env, "SMTP_PORT", 25, int),
            smtp_username=env.get("SMTP_USERNAME", ""),
            smtp_password=env.get("SMTP_PASSWORD", ""),
            smtp_starttls=_bool(env.get("SMTP_STARTTLS", "false"), "SMTP_STARTTLS"),
            smtp_timeout=_num(env, "SMTP_TIMEOUT", 10.0),
            email_http_url=env.get("EMAIL_HTTP_URL", ""),
            email_http_token=env.get("EMAIL_HTTP_TOKEN", ""),
            push_backend=_choice(env, "PUSH_BACKEND", "file", ("file", "http")),
            push_file_dir=env.get("PUSH_FILE_DIR") or "var/outbox/push",
            push_http_url=env.get("PUSH_HTTP_URL", ""),
            push_http_token=env.get("PUSH_HTTP_TOKEN", ""),
            http_timeout=_num(env, "NOTIFICATION_HTTP_TIMEOUT", 10.0),
            max_retries=_num(env, "NOTIFICATION_MAX_RETRIES", 8, int),
            lease_seconds=_num(env, "NOTIFICATION_LEASE_SECONDS", max(
                60.0, 3 * _num(env, "NOTIFICATION_HTTP_TIMEOUT", 10.0), 3 * _num(env, "SMTP_TIMEOUT", 10.0))),
            stall_check_seconds=_num(env, "NOTIFICATION_STALL_CHECK_SECONDS", 15.0),
            retry_base_seconds=_num(env, "NOTIFICATION_RETRY_BASE_SECONDS", 1.0),
            retry_max_seconds=_num(env, "NOTIFICATION_RETRY_MAX_SECONDS", 900.0),
            task_soft_time_limit=_num(env, "NOTIFICATION_TASK_SOFT_TIME_LIMIT", 60.0),
            task_time_limit=_num(env, "NOTIFICATION_TASK_TIME_LIMIT", 90.0),
            metrics_port=_num(env, "NOTIFICATION_METRICS_PORT", 9808, int),
            log_format=_choice(env, "NOTIFICATION_LOG_FORMAT", "console", ("json", "console")),
            receipts_publisher=_bool(env.get("NOTIFICATION_RECEIPTS_PUBLISHER", "true"), "NOTIFICATION_RECEIPTS_PUBLISHER"),
            receipts_poll_seconds=_num(env, "NOTIFICATION_RECEIPTS_POLL_SECONDS", 1.0),
            receipts_batch_size=_num(env, "NOTIFICATION_RECEIPTS_BATCH_SIZE", 100, int),
            receipts_max_backoff_seconds=_num(env, "NOTIFICATION_RECEIPTS_MAX_BACKOFF_SECONDS", 3.0),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.email_backend == "http" and not self.email_http_url:
            raise ConfigError("EMAIL_BACKEND=http needs EMAIL_HTTP_URL")
        if self.push_backend == "http" and not self.push_http_url:
            raise ConfigError("PUSH_BACKEND=http needs PUSH_HTTP_URL")
        if self.retry_max_seconds > 900:
            # RabbitMQ's consumer timeout is 30 min; a countdown longer than that would be redelivered.
            raise ConfigError("NOTIFICATION_RETRY_MAX_SECONDS must be <= 900")
        if self.lease_seconds <= 2 * max(self.http_timeout, self.smtp_timeout):
            # A lease that runs out while the provider call is still allowed to run would
            # let a second attempt send in parallel.
            raise ConfigError("NOTIFICATION_LEASE_SECONDS must be more than 2x the provider timeouts")
        if self.max_retries < 0:
            raise ConfigError("NOTIFICATION_MAX_RETRIES must be >= 0")
