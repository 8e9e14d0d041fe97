"""Which message of a booking makes an older one stale: message kinds, and the rule over them.

Every message carries its booking's version. A customer should never be told
something older after something newer, so a message of a newer version makes
an older one of the same booking *on the same channel* stale when it tells
the customer what the older one told, or more:

* **schedule** (``booking.confirmed``, ``booking.rescheduled``): when the
  booking is. A newer schedule message supersedes older schedule messages and
  older reminders (both name a time that is no longer true).
* **reminder** (``booking.reminder``): that the booking starts soon. A newer
  reminder supersedes older reminders only: a reminder says nothing about a
  confirmation or a reschedule, and the schedule message of its own version
  (written by the booking service in the same transaction or before it)
  supersedes those anyway.
* **cancellation** (``booking.cancelled``): that the booking is off. It
  supersedes everything older. Its staleness is also booking-wide (every
  channel, ``booking_states.cancelled_version``), the older rule.

Messages of the same version never supersede each other (a reminder v2 is not
superseded by the reschedule v2). A message "of a newer version" counts once
it has been *opened*: dispatch created its deliveries, whatever became of
them since (queued, sending, sent, even dead: sending the older one would
still tell the customer something no longer true).
"""

from __future__ import annotations

import shared

#: When the booking is.
SCHEDULE = "schedule"
#: That the booking starts soon.
REMINDER = "reminder"
#: That the booking is off.
CANCELLATION = "cancellation"

#: The kind of each event (an event not listed, e.g. a NULL of an old row, supersedes nothing).
KIND_OF_EVENT = {
    shared.Event.CONFIRMED.value: SCHEDULE,
    shared.Event.RESCHEDULED.value: SCHEDULE,
    shared.Event.REMINDER.value: REMINDER,
    shared.Event.CANCELLED.value: CANCELLATION,
}

#: Kind of the newer message → kinds of the older messages (same booking, same channel) it makes stale.
SUPERSEDES = {
    SCHEDULE: (SCHEDULE, REMINDER),
    REMINDER: (REMINDER,),
    CANCELLATION: (SCHEDULE, REMINDER, CANCELLATION),
}


def supersedes(newer_event: str | None, older_event: str | None) -> bool:
    """True when a message of ``newer_event`` of a newer version makes one of ``older_event`` stale."""
    newer, older = KIND_OF_EVENT.get(newer_event or ""), KIND_OF_EVENT.get(older_event or "")
    return newer is not None and older in SUPERSEDES[newer]


def _events(kinds) -> str:
    return ", ".join(f"'{event}'" for event, kind in sorted(KIND_OF_EVENT.items()) if kind in kinds)


def supersedes_sql(newer_event: str, older_event: str) -> str:
    """:func:`supersedes` as an SQL condition over two event expressions (columns or parameters)."""
    pairs = [f"({newer_event} IN ({_events((kind,))}) AND {older_event} IN ({_events(older)}))"
             for kind, older in SUPERSEDES.items()]
    return "(" + " OR ".join(pairs) + ")"
