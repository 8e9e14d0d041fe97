"""The notification service's settings: typed, read the same way by every entry point, refused in one line.

Unit tier: no broker, no database server. The CLI runs in-process (``cli.main``) against
loopback ports nothing listens on and a throwaway SQLite file.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pathlib
import re
import sys

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from notification_service import cli
from notification_service.settings import EXIT_CONFIG, ConfigError, Settings, describe
from tests.support import free_port

REPO = pathlib.Path(__file__).resolve().parents[3]
#: Values the task names as the ones an operator gets wrong.
BAD_VALUES = [("NOTIFICATION_MAX_RETRIES", "abc"), ("EMAIL_BACKEND", "carrier pigeon"),
              ("NOTIFICATION_LOG_LEVEL", "LOUD"), ("SMTP_STARTTLS", "maybe"), ("NOTIFICATION_METRICS_PORT", "-1"),
              ("EMAIL_HTTP_RATE_LIMIT", "-1"), ("NOTIFICATION_RATE_LIMIT_MAX_WAIT_SECONDS", "soon")]


@pytest.fixture(autouse=True)
def restore_logging():
    """cli.main and configure() install a handler on the captured stderr: put logging back after each test."""
    names = ["", *cli.QUIET_LOGGERS]
    saved = {name: (logging.getLogger(name).level, logging.getLogger(name).handlers[:]) for name in names}
    yield
    for name, (level, handlers) in saved.items():
        logging.getLogger(name).setLevel(level)
        logging.getLogger(name).handlers[:] = handlers


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No variable of the service in the environment, and a working directory without a .env."""
    for variable in Settings.variables().values():
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def test_plain_settings_read_neither_the_environment_nor_dotenv(clean_env, monkeypatch):
    monkeypatch.setenv("AMQP_URL", "amqp://env-host//")
    (clean_env / ".env").write_text("EMAIL_FROM=dotenv@example.org\n")
    settings = Settings(max_retries=3)
    assert (settings.amqp_url, settings.email_from, settings.max_retries) == (
        "amqp://guest:guest@localhost:5672//", "bookings@example.org", 3)


def test_from_env_reads_dotenv_and_the_real_environment_wins(clean_env, monkeypatch):
    (clean_env / ".env").write_text("AMQP_URL=amqp://dotenv-host//\nEMAIL_FROM=dotenv@example.org\n"
                                    "BOOKING_API_KEYS=k1\nSMTP_USERNAME=\n")
    monkeypatch.setenv("AMQP_URL", "amqp://env-host//")
    settings = Settings.from_env()
    assert settings.amqp_url == "amqp://env-host//"
    assert settings.email_from == "dotenv@example.org"
    assert settings.smtp_username == ""


def test_an_empty_value_is_the_default_and_only_documented_names_count():
    settings = Settings.from_env({"NOTIFICATION_MAX_RETRIES": "", "amqp_url": "amqp://field-name//",
                                  "max_retries": "1", "BOOKING_LOG_LEVEL": "LOUD"})
    assert (settings.max_retries, settings.amqp_url) == (8, "amqp://guest:guest@localhost:5672//")


def test_values_are_typed_and_choices_normalised():
    settings = Settings.from_env({"EMAIL_BACKEND": " SMTP ", "NOTIFICATION_LOG_LEVEL": "debug", "SMTP_STARTTLS": "yes",
                                  "SMTP_PORT": "587", "NOTIFICATION_LOG_FORMAT": "JSON"})
    assert (settings.email_backend, settings.log_level, settings.smtp_starttls, settings.smtp_port,
            settings.log_format) == ("smtp", "DEBUG", True, 587, "json")


def test_lease_defaults_to_three_provider_timeouts_and_must_outlast_two():
    assert Settings.from_env({}).lease_seconds == 60
    assert Settings.from_env({"NOTIFICATION_HTTP_TIMEOUT": "30"}).lease_seconds == 90
    assert Settings(smtp_timeout=40).lease_seconds == 120
    assert Settings.from_env({"NOTIFICATION_LEASE_SECONDS": "75"}).lease_seconds == 75
    with pytest.raises(ConfigError, match="NOTIFICATION_LEASE_SECONDS"):
        Settings.from_env({"NOTIFICATION_LEASE_SECONDS": "20", "NOTIFICATION_HTTP_TIMEOUT": "10"})


@pytest.mark.parametrize(("variable", "value"), BAD_VALUES)
def test_a_bad_value_is_one_line_naming_the_variable(variable, value):
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({variable: value})
    assert one_line(str(refused.value)).startswith(f"{variable}: ")
    assert repr(value) in str(refused.value)


def test_cross_field_checks_name_both_variables():
    for env, named in (({"EMAIL_BACKEND": "http"}, "EMAIL_HTTP_URL"), ({"PUSH_BACKEND": "http"}, "PUSH_HTTP_URL"),
                       ({"NOTIFICATION_RETRY_MAX_SECONDS": "3600"}, "NOTIFICATION_RETRY_MAX_SECONDS")):
        with pytest.raises(ConfigError, match=named):
            Settings.from_env(env)


def test_secrets_are_never_shown():
    settings = Settings(smtp_password="pw-1", email_http_token="tok-2", push_http_token="tok-3",
                        email_backend="http", email_http_url="https://mail.invalid/send")
    for text in (repr(settings), str(settings)):
        assert not {"pw-1", "tok-2", "tok-3"} & set(re.findall(r"[\w-]+", text))
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"PUSH_BACKEND": "http", "PUSH_HTTP_TOKEN": "tok-4", "AMQP_URL": "amqp://u:pw-5@h//"})
    assert "tok-4" not in str(refused.value) and "pw-5" not in str(refused.value)


def test_describe_names_the_variable_of_a_settings_call():
    with pytest.raises(ValidationError) as refused:
        Settings(max_retries=-1)
    assert describe(refused.value).startswith("NOTIFICATION_MAX_RETRIES: ")


@pytest.mark.parametrize(("variable", "value"), BAD_VALUES)
def test_cli_refuses_a_bad_setting_in_one_line(clean_env, monkeypatch, capsys, variable, value):
    monkeypatch.setenv(variable, value)
    assert cli.main(["status", "n-1"]) == EXIT_CONFIG
    assert variable in one_line(capsys.readouterr().err)


def test_cli_reads_a_bad_setting_from_dotenv_too(clean_env, capsys):
    (clean_env / ".env").write_text("EMAIL_BACKEND=carrier pigeon\n")
    assert cli.main(["topology", "export", "-"]) == EXIT_CONFIG
    assert "EMAIL_BACKEND" in one_line(capsys.readouterr().err)


def test_worker_refuses_a_bad_setting_in_one_line(clean_env, monkeypatch, capsys):
    """``celery -A notification_service.celery_app worker`` imports this module first."""
    monkeypatch.setenv("NOTIFICATION_MAX_RETRIES", "abc")
    monkeypatch.delitem(sys.modules, "notification_service.celery_app", raising=False)
    with pytest.raises(SystemExit) as exited:
        importlib.import_module("notification_service.celery_app")
    assert exited.value.code == EXIT_CONFIG
    assert "NOTIFICATION_MAX_RETRIES" in one_line(capsys.readouterr().err)


@pytest.mark.parametrize("command", [["dlq", "list"], ["topology", "declare"]])
def test_cli_with_the_broker_away_prints_one_line(clean_env, monkeypatch, capsys, command):
    port = free_port()
    monkeypatch.setenv("AMQP_URL", f"amqp://guest:sekrit@127.0.0.1:{port}//")
    assert cli.main(command) == cli.EXIT_UNAVAILABLE
    line = one_line(capsys.readouterr().err)
    assert f"127.0.0.1:{port}" in line and "sekrit" not in line


@pytest.mark.parametrize("command", [["status", "abc"], ["migrate"]])
def test_cli_with_the_database_away_prints_one_line(clean_env, monkeypatch, capsys, command):
    monkeypatch.setenv("NOTIFICATION_DATABASE_URL", f"postgresql+psycopg://u:sekrit@127.0.0.1:{free_port()}/x")
    assert cli.main(command) == cli.EXIT_UNAVAILABLE
    line = one_line(capsys.readouterr().err)
    assert "NOTIFICATION_DATABASE_URL" in line and "sekrit" not in line


def test_status_never_prints_the_statement_or_its_parameters(clean_env, monkeypatch, capsys):
    # A database without the tables: the query fails, and SQLAlchemy's message would carry both.
    monkeypatch.setenv("NOTIFICATION_DATABASE_URL", f"sqlite:///{clean_env / 'empty.db'}")
    assert cli.main(["status", "abc-notification"]) == cli.EXIT_UNAVAILABLE
    line = one_line(capsys.readouterr().err)
    assert "no such table" in line
    assert "abc-notification" not in line and "SELECT" not in line and "parameters" not in line


def test_a_driver_message_quoting_a_parameter_is_masked():
    error = sa.exc.DataError("SELECT * FROM deliveries WHERE notification_id = %s", ("secret-id",),
                             ValueError('invalid input syntax for type uuid: "secret-id"\nLINE 1: SELECT'))
    line = cli._database_failure(error)
    assert line == 'ValueError: invalid input syntax for type uuid: "?"'


def test_version_and_help_for_every_subcommand_and_option(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert re.fullmatch(r"notification-service \S+\n", capsys.readouterr().out)

    def undocumented(parser: argparse.ArgumentParser, path: str) -> list[str]:
        missing = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helped = {choice.dest for choice in action._choices_actions if choice.help}
                for name, subparser in action.choices.items():
                    if name not in helped or not subparser.description:
                        missing.append(f"{path} {name}")
                    missing += undocumented(subparser, f"{path} {name}")
            elif not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
        return missing

    assert undocumented(cli.build_parser(), "notification-service") == []


def test_configure_defaults_to_the_log_settings(clean_env, monkeypatch):
    from notification_service.runtime import logs

    monkeypatch.setenv("NOTIFICATION_LOG_LEVEL", "WARNING")
    logs.configure()
    assert logging.getLogger().level == logging.WARNING
    logs.configure("console", "DEBUG")  # explicit arguments win, as the worker's --loglevel does
    assert logging.getLogger().level == logging.DEBUG


def _readme_variables() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("### Notification service", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", row.split(" | ")[0])]


def _env_example_variables() -> list[str]:
    text = (REPO / "notification_service" / ".env.example").read_text()
    return re.findall(r"^([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE)


@pytest.mark.parametrize("documented", [_readme_variables, _env_example_variables], ids=["README", ".env.example"])
def test_every_variable_is_documented_exactly_once(documented):
    names = documented()
    assert sorted(names) == sorted(set(names)), "a variable documented twice"
    assert set(names) == set(Settings.variables().values())
