"""Settings of the notification service, read from environment variables and ``./.env``.

pydantic-settings rather than hand-written parsing: every variable gets a type, a
choice is a ``Literal``, and one validation error names the variable it came from, so
the CLI and the worker can refuse a bad value with one line instead of a traceback
from deep inside a provider. It also reads ``.env`` the way the environment is read.

Nothing here opens a connection; ``Settings.from_env()`` is called by the app factory
and the CLI, never at import time. ``Settings(...)`` reads nothing but its arguments.
"""

from __future__ import annotations

import ipaddress
import pathlib
from collections.abc import Mapping
from typing import Any, Literal, Self

from pydantic import Field, IPvAnyAddress, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

#: Default SQLite file of the delivery log (relative to the working directory).
DEFAULT_DATABASE_URL = "sqlite:///var/notification.db"
DEFAULT_AMQP_URL = "amqp://guest:guest@localhost:5672//"
#: The file every entry point (CLI, Celery worker) reads after the environment.
ENV_FILE = ".env"
#: Exit status of a process that refuses its settings (sysexits.h EX_CONFIG): fix, don't restart.
EXIT_CONFIG = 78

#: The provider kinds of each channel (``EMAIL_PROVIDERS``, ``PUSH_PROVIDERS``).
EMAIL_KINDS = ("file", "smtp", "http")
PUSH_KINDS = ("file", "http")

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


def _kinds(value: str) -> tuple[str, ...]:
    return tuple(part for part in value.split(",") if part)


class ConfigError(ValueError):
    """Raised when an environment variable holds a value the service cannot use."""


def _var(name: str, default: Any, **constraints: Any) -> Any:
    """A field read from the environment variable ``name``."""
    return Field(default, validation_alias=name, **constraints)


def _secret(name: str) -> Any:
    # repr=False keeps it out of repr(), str() and so out of log lines; a plain str (not
    # SecretStr) because the providers hand it to smtplib and requests as it is.
    return Field("", validation_alias=name, repr=False)


def _default_lease(data: dict[str, Any]) -> float:
    # A failed timeout is reported by its own field; the lease then only needs some value.
    return max(60.0, 3 * data.get("http_timeout", 10.0), 3 * data.get("smtp_timeout", 10.0))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        frozen=True,
        # The booking service's variables share the environment and the .env file.
        extra="ignore",
        # Variables are exactly the names documented; tests and code may use field names.
        case_sensitive=True,
        populate_by_name=True,
        # `NAME=` (an .env.example line left blank, compose's `${NAME:-}`) means "the default".
        env_ignore_empty=True,
    )

    amqp_url: str = _var("AMQP_URL", DEFAULT_AMQP_URL)
    database_url: str = _var("NOTIFICATION_DATABASE_URL", DEFAULT_DATABASE_URL)
    email_backend: Literal["file", "smtp", "http"] = _var("EMAIL_BACKEND", "file")
    email_file_dir: str = _var("EMAIL_FILE_DIR", "var/outbox/email")
    email_from: str = _var("EMAIL_FROM", "bookings@example.org")
    smtp_host: str = _var("SMTP_HOST", "localhost")
    smtp_port: int = _var("SMTP_PORT", 25, ge=1, le=65535)
    smtp_username: str = _var("SMTP_USERNAME", "")
    smtp_password: str = _secret("SMTP_PASSWORD")
    smtp_starttls: bool = _var("SMTP_STARTTLS", False)
    smtp_timeout: float = _var("SMTP_TIMEOUT", 10.0, gt=0)
    email_http_url: str = _var("EMAIL_HTTP_URL", "")
    email_http_token: str = _secret("EMAIL_HTTP_TOKEN")
    push_backend: Literal["file", "http"] = _var("PUSH_BACKEND", "file")
    push_file_dir: str = _var("PUSH_FILE_DIR", "var/outbox/push")
    push_http_url: str = _var("PUSH_HTTP_URL", "")
    push_http_token: str = _secret("PUSH_HTTP_TOKEN")
    http_timeout: float = _var("NOTIFICATION_HTTP_TIMEOUT", 10.0, gt=0)
    #: Sends per second to each provider across every worker process sharing the database; 0 = no limit.
    email_http_rate_limit: float = _var("EMAIL_HTTP_RATE_LIMIT", 0.0, ge=0)
    smtp_rate_limit: float = _var("SMTP_RATE_LIMIT", 0.0, ge=0)
    push_http_rate_limit: float = _var("PUSH_HTTP_RATE_LIMIT", 0.0, ge=0)
    #: A send slot further away than this goes back to the broker (RateLimited) instead of holding a thread.
    rate_limit_max_wait: float = _var("NOTIFICATION_RATE_LIMIT_MAX_WAIT_SECONDS", 5.0, ge=0)
    #: Retries of an unexpected error (a bug); an outage is bounded by age instead (max_age_seconds).
    max_retries: int = _var("NOTIFICATION_MAX_RETRIES", 8, ge=0)
    #: An outage (provider, database, broker) is retried until the notification is this old.
    max_age_seconds: float = _var("NOTIFICATION_MAX_AGE_SECONDS", 86400.0, gt=0)
    #: Derived from the provider timeouts (fields above) unless set.
    lease_seconds: float = Field(default_factory=_default_lease, validation_alias="NOTIFICATION_LEASE_SECONDS")
    stall_check_seconds: float = _var("NOTIFICATION_STALL_CHECK_SECONDS", 15.0, ge=0)
    retry_base_seconds: float = _var("NOTIFICATION_RETRY_BASE_SECONDS", 1.0, gt=0)
    # RabbitMQ's consumer timeout is 30 min; a countdown longer than that would be redelivered.
    retry_max_seconds: float = _var("NOTIFICATION_RETRY_MAX_SECONDS", 900.0, gt=0, le=900)
    task_soft_time_limit: float = _var("NOTIFICATION_TASK_SOFT_TIME_LIMIT", 60.0, gt=0)
    task_time_limit: float = _var("NOTIFICATION_TASK_TIME_LIMIT", 90.0, gt=0)
    metrics_port: int = _var("NOTIFICATION_METRICS_PORT", 9808, ge=0, le=65535)
    #: Loopback by default; a deployment whose scraper or probes come from outside the pod sets 0.0.0.0.
    metrics_addr: IPvAnyAddress = _var("NOTIFICATION_METRICS_ADDR", ipaddress.ip_address("127.0.0.1"))
    log_format: Literal["json", "console"] = _var("NOTIFICATION_LOG_FORMAT", "console")
    log_level: LogLevel = _var("NOTIFICATION_LOG_LEVEL", "INFO")
    #: Every worker process publishes the delivery receipts outbox (``receipts/publisher.py``).
    #: Ordered providers per channel (failover), kinds separated by commas; empty: the one *_BACKEND names.
    email_providers: str = _var("EMAIL_PROVIDERS", "")
    push_providers: str = _var("PUSH_PROVIDERS", "")
    #: Consecutive transient failures that open a provider's circuit breaker.
    breaker_failures: int = _var("NOTIFICATION_BREAKER_FAILURES", 5, ge=1)
    #: How long an open breaker fails calls fast before one probe; doubled after each failed probe (cap 300 s).
    breaker_open_seconds: float = _var("NOTIFICATION_BREAKER_OPEN_SECONDS", 30.0, gt=0, le=300)
    receipts_publisher: bool = _var("NOTIFICATION_RECEIPTS_PUBLISHER", True)
    receipts_poll_seconds: float = _var("NOTIFICATION_RECEIPTS_POLL_SECONDS", 1.0, gt=0)
    receipts_batch_size: int = _var("NOTIFICATION_RECEIPTS_BATCH_SIZE", 100, ge=1)
    receipts_max_backoff_seconds: float = _var("NOTIFICATION_RECEIPTS_MAX_BACKOFF_SECONDS", 3.0, gt=0)
    #: The webhook receiver (``notification-service webhooks``): where gunicorn listens, how many processes.
    webhook_bind: str = _var("NOTIFICATION_WEBHOOK_BIND", "127.0.0.1:8090")
    webhook_workers: int = _var("NOTIFICATION_WEBHOOK_WORKERS", 2, ge=1, le=64)
    #: Secrets of the generic webhook format, separated by commas: every one is accepted (two during a rotation).
    webhook_secrets: str = _secret("NOTIFICATION_WEBHOOK_SECRETS")
    #: Mailgun's webhook signing keys, separated by commas (two during a rotation).
    mailgun_signing_keys: str = _secret("MAILGUN_WEBHOOK_SIGNING_KEYS")
    #: A signed timestamp further than this from now (either way) is refused: a replayed capture expires.
    webhook_tolerance_seconds: int = _var("NOTIFICATION_WEBHOOK_TOLERANCE_SECONDS", 300, ge=1, le=86400)
    webhook_max_body_bytes: int = _var("NOTIFICATION_WEBHOOK_MAX_BODY_BYTES", 65536, ge=1024, le=10 * 2**20)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Settings(...) is built from its arguments alone, so a test never picks up the
        # developer's environment; from_env() is the one place that reads it.
        return (init_settings,)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None,
                 env_file: str | pathlib.Path | None = ENV_FILE) -> Settings:
        """Settings from ``env`` alone, or from ``os.environ`` over ``env_file``.

        The real environment wins over the file; a variable set in neither takes its default.
        Raises ``ConfigError`` with one line naming every variable that is wrong.
        """
        if env is None:
            merged: dict[str, Any] = {}
            # Lowest precedence first, so the environment's values replace the file's.
            for source in (DotEnvSettingsSource(cls, env_file=env_file), EnvSettingsSource(cls)):
                merged.update(source())
            env = merged
        # Only the documented names: the sources would also take a field's own name
        # (`amqp_url=`), which is not a variable of this service.
        names = set(cls.variables().values())
        values = {name: value for name, value in env.items() if name in names and value != ""}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ConfigError(describe(exc)) from None

    @field_validator("email_providers", "push_providers", mode="before")
    @classmethod
    def _list(cls, value: Any) -> Any:
        return ",".join(part.strip().lower() for part in value.split(",")) if isinstance(value, str) else value

    @field_validator("email_backend", "push_backend", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @property
    def email_chain(self) -> tuple[str, ...]:
        """The e-mail provider kinds in the order they are tried (``EMAIL_PROVIDERS``, else ``EMAIL_BACKEND``)."""
        return _kinds(self.email_providers) or (self.email_backend,)

    @property
    def push_chain(self) -> tuple[str, ...]:
        """The push provider kinds in the order they are tried (``PUSH_PROVIDERS``, else ``PUSH_BACKEND``)."""
        return _kinds(self.push_providers) or (self.push_backend,)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        for variable, value, known in (("EMAIL_PROVIDERS", self.email_providers, EMAIL_KINDS),
                                       ("PUSH_PROVIDERS", self.push_providers, PUSH_KINDS)):
            kinds = _kinds(value)
            unknown = [kind for kind in kinds if kind not in known]
            if unknown:
                raise ValueError(f"{variable}: unknown provider {', '.join(map(repr, unknown))} "
                                 f"(one or more of {', '.join(known)}, comma-separated)")
            if len(set(kinds)) < len(kinds):
                raise ValueError(f"{variable}: a provider is listed twice ({value!r})")
            if value and not kinds:
                raise ValueError(f"{variable}: no provider named")
        if "http" in self.email_chain and not self.email_http_url:
            raise ValueError("EMAIL_BACKEND=http (or http in EMAIL_PROVIDERS) needs EMAIL_HTTP_URL")
        if "http" in self.push_chain and not self.push_http_url:
            raise ValueError("PUSH_BACKEND=http (or http in PUSH_PROVIDERS) needs PUSH_HTTP_URL")
        if self.lease_seconds <= 2 * max(self.http_timeout, self.smtp_timeout):
            # A lease that runs out while the provider call is still allowed to run would
            # let a second attempt send in parallel.
            raise ValueError("NOTIFICATION_LEASE_SECONDS must be more than 2x the provider timeouts "
                             "(NOTIFICATION_HTTP_TIMEOUT, SMTP_TIMEOUT)")
        return self

    @classmethod
    def variables(cls) -> dict[str, str]:
        """Field name → the environment variable it is read from."""
        return {name: str(field.validation_alias) for name, field in cls.model_fields.items()}


def describe(error: ValidationError) -> str:
    """One line naming each wrong variable, with the value only where it cannot be a secret."""
    variables = Settings.variables()
    by_variable = {variable: name for name, variable in variables.items()}
    problems = []
    for item in error.errors(include_url=False):
        if item["type"] == "default_factory_not_called":  # the lease: follows from an error listed already
            continue
        if not item["loc"]:  # a model validator: its message already names the variables
            cause = item.get("ctx", {}).get("error")
            problems.append(str(cause) if cause is not None else item["msg"])
            continue
        key = str(item["loc"][0])
        name = by_variable.get(key, key)
        # A str field only fails in the model validator; its value (a URL, a token) is never echoed.
        field = Settings.model_fields.get(name)
        shown = "" if field is None or field.annotation is str else f", got {item['input']!r}"
        problems.append(f"{variables.get(name, key)}: {item['msg']}{shown}")
    return "; ".join(problems)
