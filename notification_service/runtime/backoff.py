"""The one reconnect backoff of the notification service: how long a loop waits after its n-th failure in a row.

A small pure function, not tenacity. The reconnect loops here (the receipts
publisher) are long-lived service loops, not one call retried until it
succeeds: they never give up, treat each failure differently (a broker error
drops the connection, a database error keeps it), reset the count on any
success, and must wake at once on stop, so they wait on their own
``threading.Event``. Tenacity would own the loop to compute a number; the
loop only needs the number. The Celery consumer's reconnects are kombu's
(``interval_start``/``interval_step``/``interval_max`` in
``worker/consumer.py``): kombu runs that loop itself and takes no function.
"""

from __future__ import annotations

import random

#: First delay after a failure; it doubles per failure in a row up to the caller's cap.
BASE_SECONDS = 0.25
#: Doubling stops here (2 ** 16 × the base is far past any cap); keeps the float finite for any count.
_MAX_DOUBLINGS = 16


def reconnect_delay(failures: int, cap: float, base: float = BASE_SECONDS) -> float:
    """Seconds to wait after ``failures`` failures in a row: ``base`` doubling per failure, at most ``cap``.

    A long outage is probed every ``cap`` seconds. The delay is scaled by a
    random 75–100 % so processes that lost the broker together do not all
    knock on it in the same instant.
    """
    return min(cap, base * 2 ** min(max(failures - 1, 0), _MAX_DOUBLINGS)) * random.uniform(0.75, 1.0)
