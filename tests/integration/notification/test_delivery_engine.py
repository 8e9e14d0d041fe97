"""The delivery log's engine never puts SQL parameters (addresses, tokens) into an error message."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from notification_service.delivery.engine import make_engine

ADDRESS = "ada.lovelace@example.org"


def test_a_failed_statement_never_shows_its_parameters(database_url):
    engine = make_engine(database_url)
    try:
        with pytest.raises(sa.exc.DBAPIError) as failed, engine.connect() as conn:
            conn.execute(sa.text("SELECT * FROM no_such_table WHERE address = :address"), {"address": ADDRESS})
    finally:
        engine.dispose()
    assert ADDRESS not in str(failed.value) and "hidden" in str(failed.value)
