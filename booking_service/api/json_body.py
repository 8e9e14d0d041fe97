"""A bounded JSON decoder for request bodies, and the webargs parser that uses it.

``json.loads`` on a hostile body fails in ways that are no ``JSONDecodeError``
and so became 500s: ``[[[[…`` 1,000 deep raises RecursionError, a 5,001-digit
number raises ValueError (Python's int-string limit), and a lone surrogate
(``"\\ud800"``) decodes fine but no text holding it can be encoded, hashed or
stored. Here each is a 400 with a clear message, before any schema sees the
body. A key given twice is a 400 too: ``json.loads`` keeps the last one
silently, so the request would mean something else than what was hashed for its
idempotency key, and than what a stricter reader of the same bytes would see.
A body that is not JSON at all (another ``Content-Type``) is a 415. (The body
size is bounded before this: ``BOOKING_MAX_BODY_BYTES``, 413, chunked or not.)
"""

from __future__ import annotations

import json
from typing import Any

import flask_smorest
from flask import g
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, UnsupportedMediaType

#: A booking nests three levels; anything deeper than this is not one.
MAX_DEPTH = 32
#: Longest integer literal accepted; no field of the API takes a number anywhere near it.
MAX_INT_DIGITS = 20


class InvalidJSON(BadRequest):
    """Raised when a request body is not JSON this API decodes; the description says why."""


def _int(literal: str) -> int:
    if len(literal.lstrip("-")) > MAX_INT_DIGITS:
        raise InvalidJSON(f"Request body holds an integer longer than {MAX_INT_DIGITS} digits.")
    return int(literal)


def _constant(name: str) -> Any:
    raise InvalidJSON(f"Request body holds {name}, which is not JSON.")


def _too_deep(value: Any) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return False


def _object(pairs: list[tuple[str, Any]]) -> dict:
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidJSON(f"Request body gives the key {json.dumps(key)[:80]} more than once.")
            seen.add(key)
    return value


def _has_lone_surrogate(value: Any) -> bool:
    """True if any string (key or value) holds half a UTF-16 pair: it cannot be encoded as UTF-8."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def decode(raw: bytes) -> Any:
    """Decode a request body; raises ``InvalidJSON`` (400) or ``json.JSONDecodeError`` with an empty document."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidJSON("Request body is not UTF-8.") from None
    if not text.strip():
        raise json.JSONDecodeError("empty body", "", 0)  # webargs: no body, so every field is missing
    try:
        value = json.loads(text, parse_int=_int, parse_constant=_constant, object_pairs_hook=_object)
    except RecursionError:
        raise InvalidJSON(f"Request body nests deeper than {MAX_DEPTH} levels.") from None
    except json.JSONDecodeError as exc:
        raise InvalidJSON(
            f"Request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}).") from None
    # Cheap bound first: fewer brackets than the limit cannot nest deeper than it.
    if text.count("[") + text.count("{") > MAX_DEPTH and _too_deep(value):
        raise InvalidJSON(f"Request body nests deeper than {MAX_DEPTH} levels.")
    if "\\u" in text and _has_lone_surrogate(value):
        raise InvalidJSON("Request body holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text.")
    return value


class BoundedParser(FlaskParser):
    """webargs' Flask parser with ``decode`` for JSON bodies; keeps the decoded body on ``g.json_body``."""

    def _raw_load_json(self, req) -> Any:
        if not is_json_request(req):
            if _has_body(req):
                raise UnsupportedMediaType("Request body must be JSON (Content-Type: application/json).")
            return core.missing
        g.json_body = decode(_bounded_body(req))
        return g.json_body


def _has_body(req) -> bool:
    return bool(req.content_length) or "chunked" in req.headers.get("Transfer-Encoding", "").lower()


def _bounded_body(req) -> bytes:
    """The body, or 413 when it is over ``MAX_CONTENT_LENGTH``, also when it came chunked.

    werkzeug checks the limit against ``Content-Length`` only; a chunked body has none, and its
    stream was silently cut at the limit, so a truncated document reached the decoder.
    """
    limit = req.max_content_length
    if limit is None or req.content_length is not None or not req.environ.get("wsgi.input_terminated"):
        return req.get_data(cache=True)
    # werkzeug's own stream stops quietly at the limit: read the server's de-chunked input itself.
    raw = req.environ["wsgi.input"].read(limit + 1)
    if len(raw) > limit:
        raise RequestEntityTooLarge()
    return raw


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's Blueprint, parsing request bodies with ``BoundedParser``."""

    ARGUMENTS_PARSER = BoundedParser()
