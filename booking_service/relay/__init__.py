"""The outbox relay (``booking-service relay``): publishes due outbox rows as Celery v2 task messages.

A row is marked published only after the broker confirmed it; a returned
(unroutable) or nacked row stays pending and is retried later with backoff.

- ``relay``: the loop (connect, claim, publish, record, wait; reconnect with backoff).
- ``outbox_lease``: which rows are due, leasing them, recording the broker's answers (SQL, two databases).
- ``confirm_window``: publishing a batch as one window of publisher confirms.
- ``message``: the envelope of one row, and the contract re-check.
- ``wakeup``: the PostgreSQL LISTEN/NOTIFY thread that wakes the loop when a booking commits.
- ``process``: the process entry point (``run_forever``).
"""
