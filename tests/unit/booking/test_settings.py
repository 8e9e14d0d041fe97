"""Booking settings: typed variables, .env under the environment, one-line errors, documented once.

Unit tier (main() in-process, no broker), except two tests that run the installed console script and
``python -m booking_service`` in a subprocess, to see what an operator's terminal shows.
"""

from __future__ import annotations

import collections
import importlib
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pydantic
import pytest

from booking_service import cli
from booking_service.api.app import create_app
from booking_service.runtime import logs
from booking_service.settings import Settings, SettingsError
from tests.deploy.repo import ROOT, THIRD_PARTY_ENV
from tests.support import free_port

VARIABLES = set(Settings.variables().values())
SCRIPT = Path(sys.executable).parent / "booking-service"


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No booking variable in the environment, and an empty working directory to put a .env in."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_env(folder: Path, **variables: str) -> None:
    (folder / ".env").write_text("".join(f"{name}={value}\n" for name, value in variables.items()))


def run_main(argv: list[str], capsys) -> tuple[int, list[str]]:
    code = cli.main(argv)
    return code, capsys.readouterr().err.splitlines()


# --- where values come from -------------------------------------------------------------------


def test_plain_settings_read_neither_the_environment_nor_dotenv(clean_env, monkeypatch):
    monkeypatch.setenv("BOOKING_LOG_LEVEL", "DEBUG")
    write_env(clean_env, BOOKING_RELAY_BATCH_SIZE="7")
    settings = Settings(database_url="sqlite://")
    assert (settings.log_level, settings.relay_batch_size) == ("INFO", 100)


def test_from_env_reads_dotenv_and_the_environment_wins_over_it(clean_env, monkeypatch):
    write_env(clean_env, BOOKING_RELAY_BATCH_SIZE="7", BOOKING_LOG_LEVEL="ERROR")
    monkeypatch.setenv("BOOKING_LOG_LEVEL", "WARNING")
    settings = Settings.from_env()
    assert (settings.relay_batch_size, settings.log_level) == (7, "WARNING")


def test_a_dotenv_shared_with_the_notification_service_is_accepted(clean_env):
    write_env(clean_env, NOTIFICATION_DATABASE_URL="sqlite:///n.db", EMAIL_BACKEND="smtp", BOOKING_WORKERS="3")
    assert Settings.from_env().workers == 3


def test_from_env_with_a_mapping_ignores_os_environ(clean_env, monkeypatch):
    monkeypatch.setenv("BOOKING_RELAY_BATCH_SIZE", "abc")
    assert Settings.from_env({"BOOKING_RELAY_BATCH_SIZE": "5"}, env_file=None).relay_batch_size == 5


def test_variables_are_matched_by_their_exact_names_only(clean_env):
    write_env(clean_env, relay_batch_size="7", booking_relay_batch_size="8")
    assert Settings.from_env().relay_batch_size == 100


def test_values_are_typed_and_api_keys_are_comma_separated():
    settings = Settings.from_env({
        "BOOKING_API_KEYS": " a, b,,c ", "BOOKING_RELAY_POLL_SECONDS": "0.5", "BOOKING_LOG_LEVEL": "debug",
        "BOOKING_SQLITE_SYNCHRONOUS": "normal", "BOOKING_METRICS_BIND": " 127.0.0.1:9100 ",
        "AMQP_URL": "amqps://booking:pw@broker:5671//",
    }, env_file=None)
    assert settings.api_keys == ("a", "b", "c")
    assert settings.relay_poll_seconds == 0.5
    assert (settings.log_level, settings.sqlite_synchronous) == ("DEBUG", "NORMAL")
    assert (settings.metrics_bind, settings.metrics_port) == ("127.0.0.1:9100", 9100)


def test_defaults_are_what_the_services_ran_with_before():
    settings = Settings()
    assert settings.api_keys == ()
    assert (settings.metrics_bind, settings.metrics_port) == ("", None)
    assert (settings.log_format, settings.log_level, settings.sqlite_synchronous) == ("console", "INFO", "FULL")
    assert settings.workers == (os.cpu_count() or 1) * 2 + 1


def test_settings_are_frozen():
    settings = Settings()
    with pytest.raises(pydantic.ValidationError):
        settings.relay_batch_size = 5


# --- a bad value is one line naming its variable ------------------------------------------------


@pytest.mark.parametrize(("variable", "value", "says"), [
    ("BOOKING_RELAY_BATCH_SIZE", "abc", "BOOKING_RELAY_BATCH_SIZE: must be an integer, got 'abc'"),
    ("BOOKING_RELAY_BATCH_SIZE", "0", "BOOKING_RELAY_BATCH_SIZE: must be at least 1, got '0'"),
    ("BOOKING_LOG_LEVEL", "LOUD", "BOOKING_LOG_LEVEL: must be one of"),
    ("BOOKING_LOG_FORMAT", "jsn", "BOOKING_LOG_FORMAT: must be one of 'json' or 'console', got 'jsn'"),
    ("BOOKING_SQLITE_SYNCHRONOUS", "OFF", "BOOKING_SQLITE_SYNCHRONOUS: must be one of"),
    ("BOOKING_RELAY_POLL_SECONDS", "soon", "BOOKING_RELAY_POLL_SECONDS: must be a number, got 'soon'"),
    ("BOOKING_METRICS_BIND", "9109", "BOOKING_METRICS_BIND: must be host:port, got '9109'"),
    ("BOOKING_BIND", "0.0.0.0", "BOOKING_BIND: must be host:port"),
    ("BOOKING_RELAY_METRICS_PORT", "70000", "BOOKING_RELAY_METRICS_PORT: must be less than 65536"),
    ("BOOKING_WORKERS", "many", "BOOKING_WORKERS: must be an integer"),
])
def test_a_bad_value_is_one_line_naming_its_variable(variable, value, says):
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({variable: value}, env_file=None)
    assert refused.value.problems == [refused.value.problems[0]]
    assert refused.value.problems[0].startswith(says)
    assert "\n" not in str(refused.value)


def test_every_bad_variable_gets_its_own_line():
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"BOOKING_WORKERS": "0", "BOOKING_LOG_FORMAT": "xml"}, env_file=None)
    assert [p.split(":")[0] for p in refused.value.problems] == ["BOOKING_WORKERS", "BOOKING_LOG_FORMAT"]


def test_settings_built_in_code_also_name_the_variable():
    with pytest.raises(SettingsError, match="^BOOKING_MAX_BODY_BYTES: must be an integer"):
        Settings(max_body_bytes="big")


@pytest.mark.parametrize(("variable", "value"), [
    ("BOOKING_DATABASE_URL", "postgresql+psycopg//booking:s3cret@db/booking"),
    ("AMQP_URL", "http://booking:s3cret@broker//"),
])
def test_an_error_about_a_url_never_repeats_its_password(variable, value):
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({variable: value}, env_file=None)
    assert refused.value.problems[0].startswith(f"{variable}: must be")
    assert "s3cret" not in str(refused.value)


def test_credentials_stay_out_of_the_repr():
    settings = Settings(database_url="postgresql+psycopg://u:s3cret@db/b", amqp_url="amqp://u:s3cret@h//",
                        api_keys=("s3cret",))
    assert "s3cret" not in repr(settings)


def test_logging_refuses_a_format_it_does_not_know():
    with pytest.raises(ValueError, match="jsn"):
        logs.configure("jsn", "INFO")


# --- the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize(("command", "variable", "value"), [
    ("relay", "BOOKING_RELAY_BATCH_SIZE", "abc"),
    ("migrate", "BOOKING_LOG_LEVEL", "LOUD"),
    ("receipts", "BOOKING_LOG_FORMAT", "jsn"),
    ("serve", "BOOKING_LOG_FORMAT", "jsn"),  # refused before gunicorn is exec'd
    ("serve", "BOOKING_WORKERS", "0"),
])
def test_every_command_refuses_a_bad_variable_in_one_line_with_status_2(clean_env, monkeypatch, capsys,
                                                                       command, variable, value):
    monkeypatch.setenv(variable, value)
    code, err = run_main([command], capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"booking-service: {variable}: ")


def test_commands_read_the_dotenv_of_the_working_directory(clean_env, capsys):
    write_env(clean_env, BOOKING_RELAY_BATCH_SIZE="abc")
    code, err = run_main(["relay"], capsys)
    assert (code, err) == (2, ["booking-service: BOOKING_RELAY_BATCH_SIZE: must be an integer, got 'abc'"])


def test_migrate_against_an_unreachable_database_is_one_line(clean_env, monkeypatch, capsys):
    monkeypatch.setenv("BOOKING_DATABASE_URL", f"postgresql+psycopg://x@127.0.0.1:{free_port()}/none")
    code, err = run_main(["migrate"], capsys)
    assert code == 1
    assert len(err) == 1 and err[0].startswith("booking-service: migrate: OperationalError: ")


def test_a_failure_that_ends_the_relay_is_one_line(clean_env, monkeypatch, capsys):
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        monkeypatch.setenv("BOOKING_DATABASE_URL", f"sqlite:///{clean_env / 'booking.db'}")
        monkeypatch.setenv("BOOKING_RELAY_METRICS_PORT", str(taken.getsockname()[1]))
        code, err = run_main(["relay"], capsys)
    assert code == 1
    assert len(err) == 1 and err[0].startswith("booking-service: relay: OSError: ")


def test_version_is_printed(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert re.fullmatch(r"booking-service \d+\.\d+\.\d+\S*\n", capsys.readouterr().out)


def test_every_subcommand_and_option_has_help():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")  # argparse keeps subparsers there only
    assert {c.dest for c in commands._choices_actions} == {"migrate", "relay", "receipts", "receipts-dlq", "serve"}
    assert all(c.help for c in commands._choices_actions)
    for name, sub in [("booking-service", parser), *commands.choices.items()]:
        for action in sub._actions:
            assert action.help, f"{name}: {action.option_strings or action.dest} has no help"
        assert sub.description, f"{name} has no description"


def test_the_console_script_prints_one_line_and_no_traceback(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    out = subprocess.run([str(SCRIPT), "relay"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         env={**env, "BOOKING_RELAY_BATCH_SIZE": "abc"})
    assert out.returncode == 2
    assert out.stderr == "booking-service: BOOKING_RELAY_BATCH_SIZE: must be an integer, got 'abc'\n"


def test_python_dash_m_runs_the_same_command(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    out = subprocess.run([sys.executable, "-m", "booking_service", "migrate"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, env={**env, "BOOKING_LOG_LEVEL": "LOUD"})
    assert out.returncode == 2
    assert len(out.stderr.splitlines()) == 1 and "BOOKING_LOG_LEVEL" in out.stderr


# --- gunicorn reads the same settings -----------------------------------------------------------


def test_gunicorn_config_reads_the_environment_and_dotenv(clean_env, monkeypatch):
    write_env(clean_env, BOOKING_BIND="127.0.0.1:8123", BOOKING_WORKERS="2", BOOKING_METRICS_BIND="127.0.0.1:9123")
    monkeypatch.setenv("BOOKING_WORKER_TIMEOUT", "45")
    from booking_service.runtime import gunicorn_conf

    conf = importlib.reload(gunicorn_conf)
    assert conf.bind == ["127.0.0.1:8123", "127.0.0.1:9123"]
    assert (conf.workers, conf.timeout) == (2, 45)


def test_the_gunicorn_app_factory_reads_dotenv(clean_env):
    write_env(clean_env, BOOKING_DATABASE_URL=f"sqlite:///{clean_env / 'booking.db'}", BOOKING_MAX_BODY_BYTES="1234",
              BOOKING_API_KEYS="from-dotenv")
    app = create_app()
    try:
        assert app.config["MAX_CONTENT_LENGTH"] == 1234
        assert app.config["BOOKING_SETTINGS"].api_keys == ("from-dotenv",)
    finally:
        app.extensions["booking_engine"].dispose()


# --- every variable is documented once ----------------------------------------------------------


def readme_booking_variables() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n### Booking service\n", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"^\| `([A-Z][A-Z0-9_]*)`", section, re.M)


def env_example_variables() -> list[str]:
    text = (ROOT / "booking_service" / ".env.example").read_text()
    return re.findall(r"^([A-Z][A-Z0-9_]*)=", text, re.M)


@pytest.mark.parametrize("where", [readme_booking_variables, env_example_variables])
def test_every_variable_is_documented_exactly_once_and_nothing_else_is(where):
    documented = where()
    assert [name for name, n in collections.Counter(documented).items() if n > 1] == []
    # Variables a library reads itself (prometheus-client's) are documented without being Settings.
    assert set(documented) - set(THIRD_PARTY_ENV) == VARIABLES


def test_every_field_says_what_it_is_for():
    assert [name for name, field in Settings.model_fields.items() if not field.description] == []
