"""A bounded JSON decoder for request bodies, and the webargs parser that uses it.

``json.loads`` on a hostile body fails in ways that are no ``JSONDecodeError``
and so became 500s: ``[[[[…`` 1,000 deep raises RecursionError, a 5,001-digit
number raises ValueError (Python's int-string limit), and a lone surrogate
(``"\\ud800"``) decodes fine but no text holding it can be encoded, hashed or
stored. Here each is a 400 with a clear message, before any schema sees the
body. (The body size is bounded before this: ``BOOKING_MAX_BODY_BYTES``, 413.)
"""

from __future__ import annotations

import json
from typing import Any

import flask_smorest
from flask import g
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request
from werkzeug.exceptions import BadRequest

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
        value = json.loads(text, parse_int=_int, parse_constant=_constant)
    except RecursionError:
        raise InvalidJSON(f"Request body nests deeper than {MAX_DEPTH} levels.") from None
    except json.JSONDecodeError as exc:
        raise InvalidJSON(f"Request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}).") from None
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
            return core.missing
        g.json_body = decode(req.get_data(cache=True))
        return g.json_body


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's Blueprint, parsing request bodies with ``BoundedParser``."""

    ARGUMENTS_PARSER = BoundedParser()
