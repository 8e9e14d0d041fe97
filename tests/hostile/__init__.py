"""Hostile inputs the suite replays: HTTP requests, AMQP messages, delivery receipts."""

from __future__ import annotations

import json
from typing import Any


def changed(base: dict, **changes: Any) -> dict:
    """A deep copy of ``base`` with ``customer__name=...`` style changes; a value of ``...`` removes the field."""
    result = json.loads(json.dumps(base))
    for path, value in changes.items():
        target = result
        *parents, leaf = path.split("__")
        for parent in parents:
            target = target[parent]
        if value is ...:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    return result
