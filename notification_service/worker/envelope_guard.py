"""The one envelope guard: is a message a task message this worker can run, without trusting it.

Every path that decodes a message body uses it: the consumer before Celery
sees a message, and the dead-letter CLI (``dlq show``/``replay``). The decoder
is bounded: a body over ``MAX_BODY_BYTES``, or nested deeper than ``MAX_DEPTH``
(``b"[" * 100000`` made ``json.loads`` raise RecursionError and killed the
worker, in a loop), is poison with a reason, never an exception.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

JSON_CONTENT_TYPE = "application/json"
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


def inspect(headers: Any, content_type: str | None, content_encoding: str | None, body: bytes | str,
            known_tasks: Mapping | set | None) -> tuple[str | None, list | None]:
    """``(problem, decoded body)``: why this is not a task message this worker can run, or ``(None, body)``."""
    if not isinstance(headers, dict):
        return "no headers", None
    if content_type != JSON_CONTENT_TYPE:
        return f"content_type must be {JSON_CONTENT_TYPE}, got {str(content_type)[:100]!r}", None
    for name in ("id", "task"):
        value = headers.get(name)
        if not value or not isinstance(value, str) or len(value) > 200:
            return f"missing '{name}' header", None
    if known_tasks is not None and headers["task"] not in known_tasks:
        return f"unknown task {headers['task'][:200]!r}", None
    try:
        decoded = decode(body, content_encoding)
    except Poison as exc:
        return str(exc), None
    if not (isinstance(decoded, list) and len(decoded) == 3):
        return "body must be a 3-item JSON array [args, kwargs, embed]", None
    args, kwargs, embed = decoded
    if not isinstance(args, list) or not isinstance(kwargs, dict) or not isinstance(embed, (dict, type(None))):
        return "body items must be [list, object, object]", None
    return None, decoded
