"""The booking service's one backoff: doubling waits, capped, with proportional jitter.

A small pure function rather than tenacity. tenacity retries *one call* until it
succeeds; the relay, its LISTEN thread and the receipts consumer are loops that
run until stopped, reset their count after any success, choose per failure what
to do while waiting (sleep on the stop event so SIGTERM is not delayed, or keep
serving AMQP heartbeats), and the relay also spaces out retries of single
outbox rows stored in the database. What they share is only the number, and
tenacity's jitter is additive (``wait_exponential_jitter``) or full
(``wait_random_exponential``); the proportional jitter below keeps ``cap`` a
hard upper bound and the wait never shorter than ``1 - jitter`` of the step.
"""

from __future__ import annotations

import random

#: First reconnect delay; doubles per refused attempt up to the caller's cap.
RECONNECT_BASE_SECONDS = 0.25
#: Doublings stop here: 2**16 times the base is past any cap in use, and the
#: exponent stays small however long an outage lasts.
_MAX_DOUBLINGS = 16


def capped_exponential(attempt: int, base: float, cap: float, jitter: float) -> float:
    """The wait before try ``attempt + 1``: ``base`` doubled per earlier attempt, at most ``cap``,
    then shortened by a random fraction of up to ``jitter`` (0 ≤ jitter < 1)."""
    step = min(cap, base * 2 ** min(max(attempt - 1, 0), _MAX_DOUBLINGS))
    return step * random.uniform(1.0 - jitter, 1.0)


def reconnect_delay(failures: int, cap: float) -> float:
    """Seconds before reconnect attempt ``failures + 1``: doubling from 0.25 s, capped at ``cap``, 25 % jitter.

    The cap is what bounds the time from "the broker answers again" to "the
    process works again", so it stays a few seconds; the jitter keeps several
    relays and consumers from probing in step.
    """
    return capped_exponential(failures, RECONNECT_BASE_SECONDS, cap, 0.25)
