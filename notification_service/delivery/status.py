"""The states of one delivery (one channel and address of one notification)."""

from __future__ import annotations

import enum


class DeliveryStatus(str, enum.Enum):
    """Where a delivery stands. Stored as its value in ``deliveries.status``."""

    #: Created by dispatch; its send task is (or is about to be) on the queue.
    PENDING = "pending"
    #: Claimed by one attempt (``lease_owner`` until ``lease_expires_at``): the provider call is in flight.
    SENDING = "sending"
    #: The provider accepted it. Final: nothing ever moves a delivery out of ``sent``.
    SENT = "sent"
    #: The last attempt failed transiently; a retry is on its way.
    FAILED = "failed"
    #: Given up (permanent failure or retries exhausted); the message is in a dead-letter queue.
    DEAD = "dead"
    #: Older than a cancellation processed for the booking, or superseded by a newer version's message
    #: on its channel (``supersession.py``): never sent.
    STALE = "stale"
    #: Its message expired before it could be sent (a reminder after the booking started).
    EXPIRED = "expired"
    #: Never sent: its channel and address are on the suppression list (``suppressions/``). Final.
    SUPPRESSED = "suppressed"
    #: The provider's events after ``sent`` (``webhooks/``), in their order of precedence
    #: (``events.EVENT_RANK``): the mailbox took it; it bounced hard; the recipient marked it as spam.
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    COMPLAINED = "complained"

    def __str__(self) -> str:
        return self.value


#: An attempt may claim a delivery in these states (``dead``: a replay from the dead-letter queue).
CLAIMABLE = (DeliveryStatus.PENDING, DeliveryStatus.FAILED, DeliveryStatus.DEAD)
#: Never sent again.
FINAL = (DeliveryStatus.SENT, DeliveryStatus.STALE, DeliveryStatus.EXPIRED, DeliveryStatus.SUPPRESSED,
         DeliveryStatus.DELIVERED, DeliveryStatus.BOUNCED, DeliveryStatus.COMPLAINED)
#: A provider took it: the statuses its events may move a delivery between.
ACCEPTED = (DeliveryStatus.SENT, DeliveryStatus.DELIVERED, DeliveryStatus.BOUNCED, DeliveryStatus.COMPLAINED)
