"""C1 controls, line separators and bidi controls are control characters too: the text rules refuse them.

The same rule in three places: the contract's one-line rule (and its JSON Schema), the
deliverable e-mail's domain, and the API's multi-line rule for notes.
"""

from __future__ import annotations

import json
import pathlib
import re

import jsonschema
import pytest
from marshmallow import ValidationError

from booking_service.api.schemas import MULTI_LINE_PATTERN, BookingCreateSchema
from shared.messages import DELIVERABLE_EMAIL_PATTERN, deliverable_email, single_line

SCHEMAS = pathlib.Path(__file__).resolve().parents[3] / "shared" / "schemas"
#: What the rules refuse besides C0: one of each kind, and each end of each range.
REFUSED = ["\x7f", "\x80", "\x85", "\x9b", "\x9f", "\u2028", "\u2029", "\u202a", "\u202e", "\u2066", "\u2069",
           "\u206a", "\u206f", "\ufeff", "\ufff9", "\ufffb"]
#: What languages need and the rules keep: ZWNJ, ZWJ, LRM, RLM, ALM, soft hyphen, zero-width space, NBSP.
KEPT = ["\u200c", "\u200d", "\u200e", "\u200f", "\u061c", "\u00ad", "\u200b", "\u00a0", "\u00e9", "\ufffd"]


@pytest.mark.parametrize("character", REFUSED, ids=lambda c: f"U+{ord(c):04X}")
def test_one_line_and_multi_line_text_refuse_invisible_controls(character):
    with pytest.raises(ValidationError):
        single_line(f"Grace{character}Hopper")
    assert re.fullmatch(MULTI_LINE_PATTERN, f"line one\nline{character}two") is None
    with pytest.raises(ValidationError):
        deliverable_email(f"grace@exa{character}mple.org")


@pytest.mark.parametrize("character", KEPT, ids=lambda c: f"U+{ord(c):04X}")
def test_the_characters_languages_need_stay_allowed(character):
    assert single_line(f"Grace{character}Hopper")
    assert re.fullmatch(MULTI_LINE_PATTERN, f"line one\r\n\tline{character}two")


def test_the_api_refuses_them_in_notes_and_names_with_a_422_message():
    body = {"resource_id": "room", "starts_at": "2031-03-01T09:00:00Z", "ends_at": "2031-03-01T10:00:00Z",
            "customer": {"name": "Grace\u202eHopper", "email": "grace@example.org"}, "notes": "a\u2028b"}
    with pytest.raises(ValidationError) as refused:
        BookingCreateSchema().load(body)
    assert set(refused.value.messages) == {"customer", "notes"}
    assert "bidi" in json.dumps(refused.value.messages)


@pytest.mark.parametrize("character", REFUSED, ids=lambda c: f"U+{ord(c):04X}")
def test_the_committed_json_schema_refuses_them_as_well(character):
    """A team validating with the JSON Schema file (not marshmallow) gets the same answer."""
    definitions = json.loads((SCHEMAS / "notification.requested.v1.schema.json").read_text())["$defs"]
    for schema, value in [(definitions["RecipientV1"]["properties"]["name"], f"Grace{character}Hopper"),
                          (definitions["BookingV1"]["properties"]["resource_id"], f"room{character}"),
                          (definitions["RecipientV1"]["properties"]["email"], f"grace@exa{character}mple.org")]:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(value, schema)
    assert definitions["RecipientV1"]["properties"]["email"]["pattern"] == DELIVERABLE_EMAIL_PATTERN
