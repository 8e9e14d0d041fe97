"""``alembic upgrade head`` run programmatically with the package's own script location."""

from __future__ import annotations

import pathlib

from alembic import command
from alembic.config import Config

PACKAGE_DIR = pathlib.Path(__file__).resolve().parent


def upgrade(database_url: str, revision: str = "head") -> None:
    config = Config()
    config.set_main_option("script_location", str(PACKAGE_DIR / "migrations"))
    # '%' would be read as interpolation by configparser.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    command.upgrade(config, revision)
