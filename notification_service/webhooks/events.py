"""A provider's delivery event as the receiver records it, and the order events are applied in."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from notification_service.delivery.status import DeliveryStatus


class BadEvent(ValueError):
    """Raised when a signed body is not an event of its format (answered 422)."""


#: ``kind`` of a temporary bounce: kept, but it changes no delivery (the provider retries it itself).
SOFT_BOUNCE = "soft_bounce"
#: What each kind of event makes of a delivery, and its precedence: an event moves a delivery only to a
#: status of higher rank, so a ``delivered`` after a ``bounced`` (reordered, replayed) changes nothing and
#: the final status is the same in any order. A complaint needs a delivery and outranks everything.
EVENT_STATUS = {"delivered": DeliveryStatus.DELIVERED, "bounced": DeliveryStatus.BOUNCED,
                "complained": DeliveryStatus.COMPLAINED}
EVENT_RANK = {DeliveryStatus.SENT: 0, DeliveryStatus.DELIVERED: 1, DeliveryStatus.BOUNCED: 2,
              DeliveryStatus.COMPLAINED: 3}
#: Kinds that put the address on the suppression list, and the entry's reason/source.
SUPPRESSING = {"bounced": ("hard bounce", "bounce"), "complained": ("complaint", "complaint")}
KINDS = (*EVENT_STATUS, SOFT_BOUNCE)


@dataclass(frozen=True)
class ProviderEvent:
    provider: str      # whose event ids these are: "email_http" (the generic format) or "mailgun"
    event_id: str
    kind: str          # one of KINDS
    message_id: str    # the provider's id of the message, as the delivery log keeps it
    occurred_at: datetime
    detail: str | None = None  # e.g. the provider's one-line reason; never the address


def lower_ranks(status: DeliveryStatus) -> list[str]:
    """Statuses a delivery may be in for an event to move it to ``status``."""
    return [s.value for s, rank in EVENT_RANK.items() if rank < EVENT_RANK[status]]
