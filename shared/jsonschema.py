"""JSON Schema (2020-12) of each message version, generated from the marshmallow schemas.

apispec does the marshmallow → schema conversion (the same converter
flask-smorest uses for the HTTP API); this module only moves the nested
component schemas under ``$defs`` so each file stands alone. Pure: the
``python -m shared export-schemas`` command does the writing.
"""

from __future__ import annotations

import json
from typing import Any

from .messages import NOTIFICATION_REQUESTED, NotificationRequestedV1
from .receipts import NOTIFICATION_STATUS, NotificationStatusV1

#: (message type, version) → the marshmallow schema the JSON Schema is made from.
#: The tolerant consumer schema is the source: extra fields are allowed on the wire.
MESSAGE_SCHEMAS = {(NOTIFICATION_REQUESTED, 1): NotificationRequestedV1, (NOTIFICATION_STATUS, 1): NotificationStatusV1}
DRAFT = "https://json-schema.org/draft/2020-12/schema"


def schema_filename(message_type: str, version: int) -> str:
    return f"{message_type}.v{version}.schema.json"


def _rewrite_refs(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: (v.replace("#/components/schemas/", "#/$defs/") if k == "$ref" else _rewrite_refs(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rewrite_refs(v) for v in node]
    return node


def json_schema(message_type: str, version: int) -> dict:
    """Return the JSON Schema document of one message version."""
    from apispec import APISpec  # imported here: only the generator and tests need it
    from apispec.ext.marshmallow import MarshmallowPlugin

    schema_cls = MESSAGE_SCHEMAS[(message_type, version)]
    name = schema_cls.__name__
    spec = APISpec("contract", "1", "3.1.0", plugins=[MarshmallowPlugin()])
    spec.components.schema(name, schema=schema_cls)
    components = _rewrite_refs(spec.to_dict()["components"]["schemas"])
    root = components.pop(name)
    return {
        "$schema": DRAFT,
        "$id": f"urn:booking-notifications:{schema_filename(message_type, version)}",
        "title": f"{message_type} v{version}",
        "description": (schema_cls.__doc__ or "").strip(),
        **root,
        "$defs": dict(sorted(components.items())),
    }


def render(document: dict) -> str:
    """Serialise deterministically so the committed file diffs cleanly."""
    return json.dumps(document, indent=2, sort_keys=True) + "\n"
