"""The one envelope guard: is a message a task message this worker can run, without trusting it.

Every path that decodes a message body uses it: the consumer before Celery
sees a message, and the dead-letter CLI (``dlq show``/``replay``). The decoder
is bounded: a body over ``MAX_BODY_BYTES``, or nested deeper than ``MAX_DEPTH``
(``b"[" * 100000`` made ``json.loads`` raise RecursionError and killed the
worker, in a loop), is poison with a reason, never an exception.

Headers a client has no business setting are poison too. RabbitMQ 3.10 *reads*
``x-death`` when it dead-letters a message: a forged one (``"count": "abc"``,
or ``[1, "x"]``) crashed the queue in ``rabbit_dead_letter`` as the worker
rejected it, and the queue stayed down after restarts. So a message arriving
for work with a broker-reserved or unknown ``x-`` header must never be
rejected as it is: the consumer dead-letters a copy without them
(``strip_reserved``), and ``dlq replay`` strips them the same way (a dead
letter legitimately carries the ``x-death`` RabbitMQ wrote). So does a countdown
retry that waited in Celery's native delayed delivery (``celery_delayed_*``
queues, TTL then dead-lettered on): its ``x-death`` is accepted when the routing
key carries the delay prefix (no client may publish one: the booking user's
topic permission is anchored on the dispatch keys) and every entry is
well-formed and names a delay queue. The body's
``embed`` must not carry callbacks, errbacks, a chain or a chord: this
service runs no workflows, and Celery would publish each one wherever its
options say (a dispatch made a worker publish a forged receipt).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from shared.wire import CORRELATION_HEADER, MESSAGE_TYPE_HEADER

JSON_CONTENT_TYPE = "application/json"
#: ``x-`` headers a message may carry on arrival: the two the producers set (shared.wire),
#: and the redelivery count a quorum queue adds (it never reads it back from the header).
ALLOWED_X_HEADERS = frozenset({CORRELATION_HEADER, MESSAGE_TYPE_HEADER, "x-delivery-count"})
#: Headers RabbitMQ writes when it dead-letters, here when a delay queue's TTL runs out.
DEATH_HEADERS = frozenset({"x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason",
                           "x-last-death-exchange", "x-last-death-queue", "x-last-death-reason"})
#: The routing key of a message Celery's native delayed delivery held: one bit of the delay per level.
_DELAYED_ROUTING_KEY = re.compile(r"^(?:[01]\.){28}")
_DELAY_QUEUE = re.compile(r"^celery_delayed_\d{1,2}$")
#: Workflow fields of Celery's ``embed``; each must be null.
WORKFLOW_FIELDS = ("callbacks", "errbacks", "chain", "chord")
#: Larger bodies are poison: a notification's task message is a few kilobytes.
MAX_BODY_BYTES = 1024 * 1024
#: Deeper JSON is poison: a task message nests about five levels.
MAX_DEPTH = 32


class Poison(ValueError):
    """Raised when a body is not something this service will decode; the message says why."""


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return False


def decode(body: bytes | str, encoding: str | None = "utf-8") -> Any:
    """JSON-decode ``body`` within the bounds; raises Poison."""
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else bytes(body)
    if len(raw) > MAX_BODY_BYTES:
        raise Poison(f"body of {len(raw)} bytes is over the {MAX_BODY_BYTES}-byte limit")
    # Cheap bound first: a body with fewer brackets than the limit cannot nest deeper than it.
    brackets = raw.count(b"[") + raw.count(b"{")
    try:
        text = raw.decode(encoding or "utf-8")
        decoded = json.loads(text)
    except RecursionError:
        raise Poison(f"body nests deeper than {MAX_DEPTH} levels") from None
    except (UnicodeDecodeError, LookupError, ValueError) as exc:
        raise Poison(f"body is not JSON: {str(exc)[:200]}") from None
    if brackets > MAX_DEPTH and _depth_exceeds(decoded, MAX_DEPTH):
        raise Poison(f"body nests deeper than {MAX_DEPTH} levels")
    if "\\u" in text and _has_lone_surrogate(decoded):
        # JSON may escape half a UTF-16 pair ("\ud800"); no text with one can be encoded or sent.
        raise Poison("body holds a lone surrogate (\\ud800-\\udfff) in a string")
    return decoded


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def delayed_by_broker(headers: Any, routing_key: str | None) -> bool:
    """Whether the death headers are RabbitMQ's own, from native delayed delivery's delay queues."""
    if not isinstance(headers, dict) or not _DELAYED_ROUTING_KEY.match(str(routing_key or "")):
        return False
    deaths = headers.get("x-death")
    if not isinstance(deaths, list) or not deaths or len(deaths) > 28:
        return False
    return all(isinstance(d, dict) and isinstance(d.get("count"), int) and d.get("reason") == "expired"
               and _DELAY_QUEUE.match(str(d.get("queue") or "")) for d in deaths)


def reserved_headers(headers: Any, routing_key: str | None = None) -> list[str]:
    """Names of the ``x-`` headers in ``headers`` that only the broker may set, or nobody
    (the death headers of a delayed retry excepted)."""
    if not isinstance(headers, dict):
        return []
    allowed = ALLOWED_X_HEADERS | DEATH_HEADERS if delayed_by_broker(headers, routing_key) else ALLOWED_X_HEADERS
    return sorted(str(name) for name in headers if str(name).lower().startswith("x-") and str(name) not in allowed)


def strip_reserved(headers: Any) -> dict:
    """``headers`` without the ones ``reserved_headers`` names (a copy; a non-dict gives ``{}``)."""
    if not isinstance(headers, dict):
        return {}
    reserved = set(reserved_headers(headers))
    return {name: value for name, value in headers.items() if str(name) not in reserved}


def inspect(headers: Any, content_type: str | None, content_encoding: str | None, body: bytes | str,
            known_tasks: Mapping | set | None, routing_key: str | None = None) -> tuple[str | None, list | None]:
    """``(problem, decoded body)``: why this is not a task message this worker can run, or ``(None, body)``."""
    problem = _envelope_problem(headers, content_type, known_tasks, routing_key)
    if problem is not None:
        return problem, None
    try:
        decoded = decode(body, content_encoding)
    except Poison as exc:
        return str(exc), None
    problem = _body_problem(decoded)
    return (problem, None) if problem is not None else (None, decoded)


def _envelope_problem(headers: Any, content_type: str | None, known_tasks: Mapping | set | None,
                      routing_key: str | None = None) -> str | None:
    if not isinstance(headers, dict):
        return "no headers"
    reserved = reserved_headers(headers, routing_key)
    if reserved:
        shown = ", ".join(repr(name[:60]) for name in reserved[:5]) + (", ..." if len(reserved) > 5 else "")
        return f"header(s) {shown} may not be set by a client (reserved for the broker)"
    if content_type != JSON_CONTENT_TYPE:
        return f"content_type must be {JSON_CONTENT_TYPE}, got {str(content_type)[:100]!r}"
    for name in ("id", "task"):
        value = headers.get(name)
        if not value or not isinstance(value, str) or len(value) > 200:
            return f"missing '{name}' header"
    if known_tasks is not None and headers["task"] not in known_tasks:
        return f"unknown task {headers['task'][:200]!r}"
    return None


def _body_problem(decoded: Any) -> str | None:
    if not (isinstance(decoded, list) and len(decoded) == 3):
        return "body must be a 3-item JSON array [args, kwargs, embed]"
    args, kwargs, embed = decoded
    if not isinstance(args, list) or not isinstance(kwargs, dict) or not isinstance(embed, (dict, type(None))):
        return "body items must be [list, object, object]"
    workflow = [name for name in WORKFLOW_FIELDS if embed and embed.get(name) is not None]
    if workflow:
        return f"embed {', '.join(workflow)} must be null: no task here runs a workflow"
    return None
