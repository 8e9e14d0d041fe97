"""Settings of the booking service: the environment, then ``./.env``, then the defaults.

pydantic-settings rather than hand-written parsing: it is pydantic's own,
maintained settings library, so each variable's type, bounds, default and
documentation sit in one declaration, and a bad value comes back as a
structured error that names its variable (see ``SettingsError``). Every field
names its variable in ``validation_alias`` in full, so grepping the code for a
variable (as the deployment tests do) finds where it is read.

``Settings(...)`` takes only its arguments, which keeps tests hermetic;
``Settings.from_env()`` is the one constructor that reads the environment.

Over 200 lines on purpose: one declaration per variable, each with the description that the README
and .env.example are checked against; the parsing itself is pydantic-settings'.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from shared.amqp_url import nodes

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

#: The file ``from_env`` reads besides the environment, relative to the working directory.
ENV_FILE = ".env"

LogFormat = Literal["json", "console"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
SqliteSynchronous = Literal["FULL", "NORMAL"]


class SettingsError(ValueError):
    """Raised when a variable holds a value the service cannot run with; one line per variable."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def _workers() -> int:
    # gunicorn's recommendation for sync workers: the cores stay busy while some wait on the database.
    return multiprocessing.cpu_count() * 2 + 1


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("must be host:port")
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        frozen=True,
        # Tests and callers pass field names; the environment and .env use the variable names.
        populate_by_name=True,
        # The .env may hold the notification service's variables too.
        extra="ignore",
        case_sensitive=True,
    )

    # Credentials (URLs with passwords, API keys) are left out of repr(): settings get logged.

    amqp_url: str = Field(
        "amqp://guest:guest@localhost:5672//", validation_alias="AMQP_URL", repr=False,
        description="Broker URL; in production the `booking` user, which may only publish. amqps:// for TLS.")
    database_url: str = Field(
        "sqlite:///var/booking.db", validation_alias="BOOKING_DATABASE_URL", repr=False,
        description="SQLAlchemy URL; the default SQLite file needs nothing else installed.")
    api_keys: Annotated[tuple[str, ...], NoDecode] = Field(
        (), validation_alias="BOOKING_API_KEYS", repr=False,
        description="Comma-separated bearer keys accepted by /v1. Empty refuses every /v1 call.")
    bind: str = Field(
        "0.0.0.0:8000", validation_alias="BOOKING_BIND",
        description="host:port gunicorn listens on (`booking-service serve`).")
    metrics_bind: str = Field(
        "", validation_alias="BOOKING_METRICS_BIND",
        description="host:port of a second gunicorn listener serving /metrics and nothing else; /metrics is then "
                    "a 404 on BOOKING_BIND. Empty keeps /metrics on BOOKING_BIND.")
    workers: int = Field(
        default_factory=_workers, ge=1, validation_alias="BOOKING_WORKERS",
        description="gunicorn sync worker processes (default 2 x cores + 1).")
    worker_timeout: int = Field(
        30, ge=1, validation_alias="BOOKING_WORKER_TIMEOUT",
        description="Seconds gunicorn lets a request run before it restarts the worker.")
    reminder_lead_seconds: int = Field(
        24 * 3600, ge=0, validation_alias="BOOKING_REMINDER_LEAD_SECONDS",
        description="How long before a booking starts its reminder is sent.")
    max_reschedules: int = Field(
        10, ge=0, validation_alias="BOOKING_MAX_RESCHEDULES",
        description="Times one booking may be rescheduled (409 after that; 0 refuses every reschedule). Each "
                    "reschedule adds two notifications to the booking: this bounds what one booking can cost.")
    max_body_bytes: int = Field(
        64 * 1024, ge=1, validation_alias="BOOKING_MAX_BODY_BYTES",
        description="Largest request body accepted (413 above it).")
    log_format: LogFormat = Field(
        "console", validation_alias="BOOKING_LOG_FORMAT",
        description="json (production) or console (development).")
    log_level: LogLevel = Field(
        "INFO", validation_alias="BOOKING_LOG_LEVEL",
        description="DEBUG, INFO, WARNING, ERROR or CRITICAL (any case).")
    sqlite_synchronous: SqliteSynchronous = Field(
        "FULL", validation_alias="BOOKING_SQLITE_SYNCHRONOUS",
        description="SQLite only: FULL (an acknowledged booking survives a power cut) or NORMAL.")
    relay_poll_seconds: float = Field(
        0.02, gt=0, validation_alias="BOOKING_RELAY_POLL_SECONDS",
        description="Relay: how long it sleeps when the outbox has nothing due. On SQLite this short poll is the "
                    "wake-up; on PostgreSQL a commit wakes the relay at once (LISTEN/NOTIFY) and the poll only "
                    "finds reminders falling due.")
    relay_batch_size: int = Field(
        100, ge=1, validation_alias="BOOKING_RELAY_BATCH_SIZE",
        description="Relay: rows leased per batch (one short claim transaction, then published outside it).")
    relay_max_backoff_seconds: float = Field(
        1.0, gt=0, validation_alias="BOOKING_RELAY_MAX_BACKOFF_SECONDS",
        description="Relay: ceiling of the reconnect backoff. Low on purpose: after a long outage the relay "
                    "probes this often, so it is back within seconds of the broker.")
    relay_confirm_timeout_seconds: float = Field(
        5.0, gt=0, le=60, validation_alias="BOOKING_RELAY_CONFIRM_TIMEOUT_SECONDS",
        description="Relay: how long it waits for the broker to confirm a batch. Rows nacked or unconfirmed by "
                    "then count as not sent: the relay reconnects (to any node of a cluster) and sends them again "
                    "with the same task id. At most 60 (half the 120 s claim lease).")
    relay_metrics_port: int = Field(
        0, ge=0, lt=65536, validation_alias="BOOKING_RELAY_METRICS_PORT",
        description="Relay: port of its own /metrics (0 = off), for a relay that does not share "
                    "PROMETHEUS_MULTIPROC_DIR with the API.")
    receipts_prefetch: int = Field(
        50, ge=0, validation_alias="BOOKING_RECEIPTS_PREFETCH",
        description="Receipts consumer: unacknowledged receipts the broker may hand it at once.")
    receipts_max_backoff_seconds: float = Field(
        3.0, gt=0, validation_alias="BOOKING_RECEIPTS_MAX_BACKOFF_SECONDS",
        description="Receipts consumer: ceiling of the reconnect backoff (broker or database away).")
    ready_broker_timeout_seconds: float = Field(
        0.5, gt=0, validation_alias="BOOKING_READY_BROKER_TIMEOUT_SECONDS",
        description="Timeout of the broker check in /readyz.")

    def __init__(self, *args: Any, **values: Any) -> None:
        # Errors speak in variable names, whoever built the settings: an operator reads them.
        try:
            super().__init__(*args, **values)
        except ValidationError as exc:
            raise SettingsError([_describe(error) for error in exc.errors()]) from None

    @field_validator("api_keys", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(k.strip() for k in value.split(",") if k.strip())
        return value

    @field_validator("log_level", "sqlite_synchronous", mode="before")
    @classmethod
    def _upper_case(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("metrics_bind", mode="before")
    @classmethod
    def _optional_host_port(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            return _host_port(value) if value else value
        return value

    @field_validator("bind")
    @classmethod
    def _bind_is_host_port(cls, value: str) -> str:
        return _host_port(value)

    @field_validator("database_url")
    @classmethod
    def _sqlalchemy_url(cls, value: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(value)
        except ArgumentError:
            raise ValueError("must be an SQLAlchemy URL such as postgresql+psycopg://user:pass@host/db") from None
        return value

    @field_validator("amqp_url")
    @classmethod
    def _amqp_url(cls, value: str) -> str:
        # The nodes of a cluster are separated by ';' (kombu's failover convention).
        if not all(node.startswith(("amqp://", "amqps://")) for node in nodes(value)):
            raise ValueError("must be an amqp:// or amqps:// URL, or several separated by ';'")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only the constructor's arguments: a test's Settings(...) never sees the developer's
        # environment or .env. from_env() adds those sources explicitly.
        return (init_settings,)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, env_file: str | Path | None = ENV_FILE) -> Settings:
        """Settings from ``environ`` (default ``os.environ``) over ``env_file``; raises ``SettingsError``."""
        environment = _MappingSource(cls, os.environ if environ is None else environ)
        dotenv = DotEnvSettingsSource(cls, env_file=env_file)
        # Only the variables themselves: a stray ``workers=`` line in .env must not set a field by its name.
        known = set(cls.variables().values())
        values = {name: value for name, value in {**dotenv(), **environment()}.items() if name in known}
        return cls(**values)  # the real environment won over .env in the merge above

    @classmethod
    def variables(cls) -> dict[str, str]:
        """Field name -> the environment variable it is read from."""
        return {name: str(field.validation_alias) for name, field in cls.model_fields.items()}

    @property
    def metrics_port(self) -> int | None:
        """Port of ``metrics_bind``, or None when /metrics stays on the API port."""
        return int(self.metrics_bind.rpartition(":")[2]) if self.metrics_bind else None


class _MappingSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping (``os.environ`` or a test's dict)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]):
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return dict(self._environ)


#: Fields whose values may carry a password or key: an error about them never repeats the value.
_SECRET_FIELDS = frozenset({"amqp_url", "database_url", "api_keys"})

#: Wording of pydantic's error types in this service's messages (anything else keeps pydantic's message).
_MESSAGES = {
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_parsing": "must be a number",
    "literal_error": "must be one of {expected}",
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than": "must be less than {lt}",
}


def _describe(error: ErrorDetails) -> str:
    """One line for one bad variable: ``VARIABLE: what it must be, got 'value'``."""
    variables = Settings.variables()
    field = str(error["loc"][0]) if error["loc"] else "settings"
    field = next((name for name, alias in variables.items() if field == alias), field)
    template = _MESSAGES.get(error["type"])
    if template is not None:
        message = template.format(**error.get("ctx", {}))
    else:
        message = error["msg"].removeprefix("Value error, ")
    variable = variables.get(field, field)
    if field in _SECRET_FIELDS:
        return f"{variable}: {message}"
    return f"{variable}: {message}, got {error['input']!r}"
