"""The compose stack's PostgreSQL init script, run against the real server."""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from tests.deploy import repo


def test_postgres_init_script_creates_a_private_database_per_role(postgres_admin_url):
    import sqlalchemy as sa

    admin = sa.engine.make_url(postgres_admin_url)
    suffix = uuid.uuid4().hex[:8]
    mine, theirs = (f"t_role_a_{suffix}", f"t_db_a_{suffix}"), (f"t_role_b_{suffix}", f"t_db_b_{suffix}")
    script = repo.DEPLOY / "postgres" / "init-databases.sh"
    env = {**os.environ, "INIT_DATABASES_DEFINE_ONLY": "1", "POSTGRES_USER": admin.username or "postgres",
           "PGHOST": admin.host or "localhost", "PGPORT": str(admin.port or 5432)}
    if admin.password:
        env["PGPASSWORD"] = admin.password
    calls = " && ".join(f"create {role} pw-{role} {db}" for role, db in (mine, theirs))
    try:
        run = subprocess.run(["bash", "-c", f'source "{script}" && {calls}'],
                             env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        own = sa.create_engine(admin.set(username=mine[0], password=f"pw-{mine[0]}", database=mine[1]))
        with own.begin() as conn:
            conn.execute(sa.text("CREATE TABLE bookings_probe (id int)"))
        own.dispose()
        # The other service's role may not even connect (CONNECT revoked from PUBLIC).
        other = sa.create_engine(admin.set(username=theirs[0], password=f"pw-{theirs[0]}", database=mine[1]))
        with pytest.raises(sa.exc.OperationalError, match="permission denied"):
            other.connect()
        other.dispose()
    finally:
        engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            for role, db in (mine, theirs):
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
                conn.execute(sa.text(f'DROP ROLE IF EXISTS "{role}"'))
        engine.dispose()
