"""The Celery message protocol v2 envelope, built without Celery.

The booking service publishes with pika and must not import Celery, yet a
Celery 5 worker has to accept what it sends. This module is the one place that
knows the envelope: headers, AMQP properties and the ``[args, kwargs, embed]``
body. It is pure: it returns values and never touches a socket.

Traps it avoids (see DESIGN.md, "Wire format"): the ``id`` header is mandatory
(a Celery 5.7 worker crashes without it), ``timelimit`` is ``[hard, soft]``,
``eta``/``expires`` are ISO-8601 UTC, and ``argsrepr``/``kwargsrepr`` never
carry personal data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"
#: AMQP delivery_mode for persistent messages.
PERSISTENT = 2
#: Header carrying the request id of the HTTP call that caused the message.
CORRELATION_HEADER = "x-correlation-id"
#: Header naming the contract the kwargs follow, for operators browsing a queue.
MESSAGE_TYPE_HEADER = "x-message-type"

_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def _iso_utc(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("eta/expires must be timezone-aware")
    return value.astimezone(UTC).isoformat()


@dataclass(frozen=True)
class TaskMessage:
    """One Celery protocol-v2 task message ready for ``basic_publish``."""

    headers: dict[str, Any]
    properties: dict[str, Any]
    body: bytes
    routing_key: str
    priority: int = field(default=0)


def task_message(
    *,
    task: str,
    task_id: str,
    routing_key: str,
    args: list | tuple = (),
    kwargs: dict | None = None,
    priority: int = 0,
    eta: datetime | None = None,
    expires: datetime | None = None,
    time_limit: float | None = None,
    soft_time_limit: float | None = None,
    root_id: str | None = None,
    parent_id: str | None = None,
    argsrepr: str = "()",
    kwargsrepr: str = "{}",
    origin: str = "",
    correlation_id: str | None = None,
    message_type: str | None = None,
    retries: int = 0,
) -> TaskMessage:
    """Build the envelope of a task message.

    ``argsrepr``/``kwargsrepr`` are shown by Flower and worker logs: pass a
    summary without personal data, never the arguments themselves.
    """
    headers: dict[str, Any] = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "shadow": None,
        "eta": _iso_utc(eta),
        "expires": _iso_utc(expires),
        "group": None,
        "group_index": None,
        "retries": retries,
        # Celery reads this as [hard, soft]; the protocol page has it backwards.
        "timelimit": [time_limit, soft_time_limit],
        "root_id": root_id or task_id,
        "parent_id": parent_id,
        "argsrepr": argsrepr,
        "kwargsrepr": kwargsrepr,
        "origin": origin,
        "ignore_result": True,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    if correlation_id:
        headers[CORRELATION_HEADER] = correlation_id
    if message_type:
        headers[MESSAGE_TYPE_HEADER] = message_type
    body = json.dumps([list(args), kwargs or {}, _EMBED], separators=(",", ":")).encode(CONTENT_ENCODING)
    properties = {
        "content_type": CONTENT_TYPE,
        "content_encoding": CONTENT_ENCODING,
        "delivery_mode": PERSISTENT,
        "priority": priority,
        "correlation_id": task_id,
        "message_id": task_id,
    }
    return TaskMessage(headers=headers, properties=properties, body=body, routing_key=routing_key, priority=priority)


def decode_body(body: bytes) -> tuple[list, dict, dict]:
    """Decode a v2 body; raises ValueError when it is not ``[args, kwargs, embed]``."""
    decoded = json.loads(body.decode(CONTENT_ENCODING))
    if not (isinstance(decoded, list) and len(decoded) == 3):
        raise ValueError("Celery v2 body must be a 3-item JSON array [args, kwargs, embed]")
    args, kwargs, embed = decoded
    if not isinstance(args, list) or not isinstance(kwargs, dict) or not isinstance(embed, dict):
        raise ValueError("Celery v2 body items must be [list, object, object]")
    return args, kwargs, embed
