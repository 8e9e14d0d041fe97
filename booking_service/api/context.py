"""Per-request database session, made on first use.

The create endpoint writes through SQLAlchemy Core and never needs a session,
so none is made for it; reads, cancel and reschedule get one on demand, closed
when the request ends (``app._request_context``).
"""

from __future__ import annotations

from flask import current_app, g
from sqlalchemy.orm import Session


def db_session() -> Session:
    session = g.get("session")
    if session is None:
        session = g.session = current_app.config["BOOKING_SESSION_FACTORY"]()
    return session
