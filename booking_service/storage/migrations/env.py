"""Alembic environment: the URL comes from the caller (``booking-service migrate``)."""

from alembic import context

from booking_service.storage.db import make_engine
from booking_service.storage.models import Base

config = context.config
url: str | None = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")


def run() -> None:
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=Base.metadata, literal_binds=True, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    if not url:
        raise RuntimeError("no database URL: pass it as the database_url attribute or set sqlalchemy.url")
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run()
