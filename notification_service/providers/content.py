"""What a provider is given to send: one e-mail or one push message of one delivery."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EmailContent:
    delivery_id: str
    to: str
    subject: str
    text: str
    html: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PushContent:
    delivery_id: str
    token: str
    title: str
    body: str
    data: dict[str, str] = field(default_factory=dict)
