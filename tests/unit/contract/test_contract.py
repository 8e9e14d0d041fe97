"""The contract: marshmallow schemas, committed JSON Schema files and fixtures agree."""

from __future__ import annotations

import json
import pathlib
import uuid
from datetime import UTC, datetime

import jsonschema
import pytest
from marshmallow import ValidationError

import shared
from shared.jsonschema import MESSAGE_SCHEMAS, json_schema, render, schema_filename
from tests.support import DISPATCH_HIGH

SHARED = pathlib.Path(shared.__file__).parent
EXAMPLES = sorted((SHARED / "examples").glob("*.json"))
VALID = [p for p in EXAMPLES if ".valid." in p.name]
INVALID = [p for p in EXAMPLES if ".invalid." in p.name]


#: How a consumer loads each message type.
LOADERS = {shared.NOTIFICATION_REQUESTED: shared.load_notification_requested,
           shared.NOTIFICATION_STATUS: shared.load_notification_status}


def committed_schema(message_type: str = shared.NOTIFICATION_REQUESTED) -> dict:
    return json.loads((SHARED / "schemas" / schema_filename(message_type, 1)).read_text())


def message_type_of(path: pathlib.Path) -> str:
    """``notification.status.v1.valid.sent.json`` → ``notification.status``."""
    return path.name.split(".v1.", 1)[0]


@pytest.mark.parametrize(("message_type", "version"), sorted(MESSAGE_SCHEMAS))
def test_committed_json_schema_matches_marshmallow(message_type, version):
    committed = (SHARED / "schemas" / schema_filename(message_type, version)).read_text()
    assert committed == render(json_schema(message_type, version)), (
        "shared/schemas is stale: run `make schemas` and commit the result"
    )


def test_every_message_version_has_a_committed_file():
    files = {p.name for p in (SHARED / "schemas").glob("*.json")}
    assert files == {schema_filename(t, v) for t, v in MESSAGE_SCHEMAS}


@pytest.mark.parametrize("message_type", sorted(LOADERS))
def test_fixtures_exist_on_both_sides(message_type):
    assert len([p for p in VALID if message_type_of(p) == message_type]) >= 4
    assert len([p for p in INVALID if message_type_of(p) == message_type]) >= 4


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_examples_pass_marshmallow_and_json_schema(path):
    doc = json.loads(path.read_text())
    LOADERS[message_type_of(path)](doc)
    jsonschema.validate(doc, committed_schema(message_type_of(path)), format_checker=jsonschema.FormatChecker())


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_examples_fail_marshmallow_and_json_schema(path):
    doc = json.loads(path.read_text())
    with pytest.raises(ValidationError):
        LOADERS[message_type_of(path)](doc)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, committed_schema(message_type_of(path)), format_checker=jsonschema.FormatChecker())


def test_receipt_consumer_accepts_unknown_fields_but_producer_refuses_them():
    doc = json.loads((SHARED / "examples" / "notification.status.v1.valid.unknown-fields.json").read_text())
    loaded = shared.load_notification_status(doc)
    assert "cost_cents" not in loaded and "resource_id" not in loaded["booking"]
    with pytest.raises(ValidationError) as err:
        shared.StrictNotificationStatusV1().load(doc)
    assert "cost_cents" in err.value.messages


@pytest.mark.parametrize(("channel", "address", "masked"), [
    ("email", "ada@example.org", "a***@example.org"),
    ("email", "Ada.Lovelace+x@Mail.Example.ORG", "A***@Mail.Example.ORG"),
    ("email", "@odd", "***@odd"),
    ("push", "device-token-1", "devi…-1"),
    ("push", "fcm:APA91bHun4MxP5egoKMwt2KZFBaFUH-1RYqx", "fcm:…qx"),
    ("push", "short", "…"),
])
def test_addresses_are_masked_into_what_the_contract_accepts(channel, address, masked):
    assert shared.mask_address(channel, address) == masked
    doc = json.loads((SHARED / "examples" / "notification.status.v1.valid.sent.json").read_text())
    shared.load_notification_status({**doc, "channel": channel, "recipient": masked})


@pytest.mark.parametrize("address", ["ada@example.org", "device-token-1", "a**@example.org", "abcde…xyz"])
def test_the_contract_refuses_an_unmasked_recipient(address):
    doc = json.loads((SHARED / "examples" / "notification.status.v1.valid.sent.json").read_text())
    with pytest.raises(ValidationError) as err:
        shared.load_notification_status({**doc, "recipient": address})
    assert "recipient" in err.value.messages


def test_consumer_accepts_unknown_fields_but_producer_refuses_them():
    doc = json.loads((SHARED / "examples" / "notification.requested.v1.valid.unknown-fields.json").read_text())
    loaded = shared.load_notification_requested(doc)
    assert "channel_hints" not in loaded and "room_name" not in loaded["booking"]
    with pytest.raises(ValidationError) as err:
        shared.StrictNotificationRequestedV1().load(doc)
    assert "channel_hints" in err.value.messages


def test_ends_before_start_is_refused():
    doc = json.loads((SHARED / "examples" / "notification.requested.v1.valid.confirmed.json").read_text())
    doc["booking"]["ends_at"] = doc["booking"]["starts_at"]
    with pytest.raises(ValidationError) as err:
        shared.load_notification_requested(doc)
    assert "ends_at" in err.value.messages["booking"]


def test_producer_dump_is_utc_and_round_trips():
    when = datetime(2030, 1, 2, 10, 0, tzinfo=UTC)
    from zoneinfo import ZoneInfo

    wire = shared.dump_notification_requested(
        {
            "message_type": shared.NOTIFICATION_REQUESTED,
            "schema_version": 1,
            "notification_id": uuid.uuid4(),
            "event": shared.Event.CONFIRMED,
            "priority": "high",
            "booking": {
                "id": uuid.uuid4(),
                "version": 1,
                "status": "confirmed",
                "resource_id": "r1",
                "starts_at": when.astimezone(ZoneInfo("Asia/Tokyo")),
                "ends_at": when.replace(hour=11),
                "timezone": "Asia/Tokyo",
                "previous_starts_at": None,
            },
            "recipient": {"name": "A", "email": "a@example.org", "locale": "en", "push_tokens": []},
            "requested_at": when,
            "correlation_id": "c1",
        }
    )
    assert wire["booking"]["starts_at"] == "2030-01-02T10:00:00Z"
    jsonschema.validate(wire, committed_schema(), format_checker=jsonschema.FormatChecker())


def test_unknown_timezone_is_refused():
    doc = json.loads((SHARED / "examples" / "notification.requested.v1.valid.confirmed.json").read_text())
    doc["booking"]["timezone"] = "Mars/Olympus"
    with pytest.raises(ValidationError):
        shared.load_notification_requested(doc)


def test_task_message_is_celery_v2():
    msg = shared.task_message(
        task=shared.DISPATCH_TASK,
        task_id="id-1",
        routing_key=DISPATCH_HIGH,
        kwargs={"message": {"x": 1}},
        priority=shared.Priority.HIGH,
        time_limit=60,
        soft_time_limit=50,
        expires=datetime(2030, 1, 1, tzinfo=UTC),
        kwargsrepr="{'message': '<notification id-1>'}",
        correlation_id="req-1",
    )
    assert msg.headers["id"] == "id-1" and msg.headers["task"] == "notifications.dispatch"
    assert msg.headers["timelimit"] == [60, 50]  # [hard, soft]
    assert msg.headers["expires"] == "2030-01-01T00:00:00+00:00"
    assert msg.properties["content_type"] == "application/json"
    assert msg.properties["delivery_mode"] == 2 and msg.properties["priority"] == 8
    args, kwargs, embed = shared.decode_body(msg.body)
    assert args == [] and kwargs == {"message": {"x": 1}} and set(embed) == {"callbacks", "errbacks", "chain", "chord"}


@pytest.mark.parametrize("body", [b"not json", b"[[], {}]", b'{"a": 1}', b"[1, 2, 3]"])
def test_decode_body_refuses_non_v2_bodies(body):
    with pytest.raises(ValueError):
        shared.decode_body(body)


def test_names_and_priorities():
    assert shared.dead_letter_queue(shared.EMAIL_QUEUE) == "notifications.email.dlq"
    assert shared.DEFAULT_PRIORITY[shared.Event.CONFIRMED] > shared.DEFAULT_PRIORITY[shared.Event.REMINDER]
    assert max(shared.Priority) <= 9  # the AMQP priority property stays on every message


def test_lanes_split_each_stage_by_priority_class():
    assert shared.WORK_QUEUES == (
        "notifications.dispatch.high", "notifications.dispatch.low", "notifications.email.high",
        "notifications.email.low", "notifications.push.high", "notifications.push.low")
    assert shared.lane_for(shared.Priority.HIGH) is shared.lane_for(shared.Priority.NORMAL) is shared.Lane.HIGH
    assert shared.lane_for(shared.Priority.LOW) is shared.Lane.LOW
    assert shared.lane_for(None) is shared.Lane.HIGH  # no priority on the message: NORMAL
    assert shared.lane_queue(shared.EMAIL_QUEUE, shared.Lane.LOW) == "notifications.email.low"
    # A booking service one version behind publishes with the stage name: bound to the high lane.
    assert shared.queue_for_routing_key("notifications.dispatch") == "notifications.dispatch.high"
    assert shared.queue_for_routing_key("notifications.push.low") == "notifications.push.low"
    assert shared.queue_for_routing_key("notifications.email") is None


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://guest:guest@localhost:5672//", "amqp://guest:guest@localhost:5672/%2F"),
        ("amqp://guest:guest@localhost:5672/", "amqp://guest:guest@localhost:5672/%2F"),
        ("amqp://guest:guest@localhost", "amqp://guest:guest@localhost/%2F"),
        ("amqps://u:p@h:5671/%2F?heartbeat=30", "amqps://u:p@h:5671/%2F?heartbeat=30"),
        ("amqp://u:p@h/test-1", "amqp://u:p@h/test-1"),
    ],
)
def test_amqp_url_default_vhost_is_spelled_for_pika(url, expected):
    from shared.amqp_url import for_pika

    assert for_pika(url) == expected


def test_a_reconnecting_pika_client_tries_the_node_it_just_failed_on_last():
    from shared.amqp_url import address, pika_urls

    url = ";".join(f"amqp://u:p@h{i}:5672/v" for i in range(1, 4))
    for _ in range(30):  # the order is random; the failed node is never first, and every node is kept
        urls = pika_urls(url, last="h2:5672")
        assert [address(u) for u in urls][-1] == "h2:5672"
        assert sorted(address(u) for u in urls) == ["h1:5672", "h2:5672", "h3:5672"]
    assert address("amqps://u:p@h") == "h:5671"
    assert {address(pika_urls(url)[0]) for _ in range(60)} == {"h1:5672", "h2:5672", "h3:5672"}


@pytest.mark.parametrize("value", ["room\n", "room\r\n", "ro\x00om", "a\rb", "tab\there"])
def test_single_line_fields_refuse_any_control_character_even_a_final_newline(value):
    from shared.messages import single_line

    with pytest.raises(ValidationError):
        single_line(value)


def receipt_example() -> dict:
    return json.loads((SHARED / "examples" / "notification.status.v1.valid.sent.json").read_text())


def validate_by_json_schema(doc: dict) -> None:
    jsonschema.validate(doc, committed_schema(shared.NOTIFICATION_STATUS), format_checker=jsonschema.FormatChecker())


def with_booking_version(doc: dict, value) -> dict:
    return {**doc, "booking": {**doc["booking"], "version": value}}


def assert_both_refuse(doc: dict, field: str) -> None:
    """marshmallow and the committed JSON Schema both refuse ``doc``, marshmallow naming ``field``."""
    with pytest.raises(ValidationError) as err:
        shared.load_notification_status(doc)
    assert field in err.value.messages
    with pytest.raises(jsonschema.ValidationError):
        validate_by_json_schema(doc)


def test_the_receipt_json_schema_bounds_every_integer_and_datetime():
    schema = committed_schema(shared.NOTIFICATION_STATUS)
    properties = {**schema["properties"], **{f"booking.{k}": v for k, v in
                                             schema["$defs"]["BookingRefV1"]["properties"].items()}}
    integers = {name: p for name, p in properties.items() if p.get("type") == "integer" and name != "schema_version"}
    assert set(integers) == {"attempt", "sequence", "booking.version"}
    assert all(p["maximum"] == 2**31 - 1 and "minimum" in p for p in integers.values())
    assert [name for name, p in properties.items() if p.get("format") == "date-time"] == ["occurred_at"]
    assert properties["occurred_at"]["pattern"] == shared.receipts.OCCURRED_AT_PATTERN


@pytest.mark.parametrize("value", ["1970-01-01T00:00:00+14:00", "2030-05-01T12:00:03Z", "9998-12-31T23:59:59-14:00"])
def test_occurred_at_from_1970_to_9998_as_written_is_accepted_and_has_a_utc_instant(value):
    doc = {**receipt_example(), "occurred_at": value}
    loaded = shared.load_notification_status(doc)
    validate_by_json_schema(doc)
    assert loaded["occurred_at"].astimezone(UTC).year in range(1969, 10000)


@pytest.mark.parametrize("value", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "9999-01-01T00:00:00Z",
                                   "1969-12-31T23:59:59Z", "+2030-05-01T12:00:03Z"])
def test_occurred_at_outside_1970_to_9998_as_written_is_refused_by_both(value):
    assert_both_refuse({**receipt_example(), "occurred_at": value}, "occurred_at")


@pytest.mark.parametrize("value", [2**31, 2**63, 1e300, 2.5, "2", True, -1])
@pytest.mark.parametrize("field", ["sequence", "attempt", "booking.version"])
def test_receipt_integers_are_json_integers_within_the_columns_that_store_them(field, value):
    doc = receipt_example()
    doc = with_booking_version(doc, value) if field == "booking.version" else {**doc, field: value}
    assert_both_refuse(doc, field.split(".")[0])


def test_the_largest_receipt_integers_are_accepted():
    top = shared.receipts.MAX_INTEGER
    loaded = shared.load_notification_status(with_booking_version({**receipt_example(), "sequence": top,
                                                                   "attempt": top}, top))
    assert loaded["sequence"] == loaded["attempt"] == loaded["booking"]["version"] == top


@pytest.mark.parametrize("field", ["reason", "correlation_id", "provider_message_id"])
def test_receipt_text_with_a_lone_surrogate_is_refused(field):
    with pytest.raises(ValidationError) as err:
        shared.load_notification_status({**receipt_example(), field: "half a pair \ud800"})
    assert field in err.value.messages


@pytest.mark.parametrize("recipient", ["a***@<script>alert(1)</script>", "a***@exa\x00mple.org", "a***@example.org\n",
                                       "<***@example.org", "a***@exa&mple.org", "de\"v…42", "dev'…42", "devi…<b",
                                       "a***@example.org\ud800"])
def test_a_recipient_with_markup_quotes_or_control_characters_is_refused(recipient):
    doc = {**receipt_example(), "recipient": recipient}
    with pytest.raises(ValidationError) as err:
        shared.load_notification_status(doc)
    assert "recipient" in err.value.messages
    # A JSON Schema pattern cannot speak of lone surrogates, and Python's jsonschema reads its final "$" as Python
    # does (before a final newline, where ECMA-262 does not); marshmallow holds the whole value to it.
    if "\ud800" not in recipient and not recipient.endswith("\n"):
        assert_both_refuse(doc, "recipient")


@pytest.mark.parametrize(("channel", "address", "masked"), [
    ("email", "'o.brien@example.org", "***@example.org"),
    ("email", "&ada@example.org", "***@example.org"),
    ("push", "<script>alert(1)</script>", "scr…t"),
    ("push", "tok\"en'with&quotes", "tok…es"),
])
def test_masks_drop_markup_and_quotes_so_the_contract_accepts_them(channel, address, masked):
    assert shared.mask_address(channel, address) == masked
    shared.load_notification_status({**receipt_example(), "channel": channel, "recipient": masked})
