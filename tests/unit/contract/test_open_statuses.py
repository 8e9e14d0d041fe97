"""Receipt statuses are an open set for consumers, a closed one for producers (issue 18's compatibility rule)."""

from __future__ import annotations

import json
import pathlib

import jsonschema
import pytest
from marshmallow import EXCLUDE, ValidationError

import shared
import shared.receipts
from tests.unit.contract.test_contract import assert_both_refuse, receipt_example, validate_by_json_schema

NEW_STATUSES = ("delivered", "bounced", "complained", "suppressed")
FUTURE_STATUS = "opened_by_recipient"


@pytest.mark.parametrize("status", [*NEW_STATUSES, FUTURE_STATUS, "x", "a" * 32])
def test_a_consumer_takes_any_well_formed_status(status):
    doc = {**receipt_example(), "status": status, "sequence": 2}
    assert shared.load_notification_status(doc)["status"] == status
    validate_by_json_schema(doc)


@pytest.mark.parametrize("status", ["", "Delivered", "delivered<script>", "a" * 33, "de-livered", "délivré",
                                    "sent now"])
def test_a_consumer_refuses_a_malformed_status(status):
    assert_both_refuse({**receipt_example(), "status": status}, "status")


def test_a_status_with_a_final_newline_is_refused():
    with pytest.raises(ValidationError) as err:
        shared.load_notification_status({**receipt_example(), "status": "sent\n"})
    assert "status" in err.value.messages


def test_a_producer_sends_only_the_statuses_it_knows():
    strict = shared.StrictNotificationStatusV1()
    assert strict.load(receipt_example())["status"] == "sent"
    with pytest.raises(ValidationError) as err:
        strict.load({**receipt_example(), "status": FUTURE_STATUS})
    assert "status" in err.value.messages


def test_a_consumer_built_when_only_five_statuses_existed_takes_the_new_ones(monkeypatch):
    monkeypatch.setattr(shared.receipts, "RECEIPT_STATUSES", ("sent", "retrying", "dead", "stale", "expired"))
    old = shared.receipts._schema(EXCLUDE)()
    for status in (*NEW_STATUSES, FUTURE_STATUS):
        assert old.load({**receipt_example(), "status": status})["status"] == status


def test_the_examples_show_delivered_bounced_and_a_future_status():
    examples = pathlib.Path(shared.__file__).parent / "examples"
    for name in ("delivered", "bounced", "future-status"):
        doc = json.loads((examples / f"notification.status.v1.valid.{name}.json").read_text())
        shared.load_notification_status(doc)
        jsonschema.validate(doc, json.loads((pathlib.Path(shared.__file__).parent / "schemas" /
                                             "notification.status.v1.schema.json").read_text()))
