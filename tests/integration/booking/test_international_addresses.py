"""International e-mail addresses at the API (issue 15 item 4): deliverable ones are booked, the rest are a 422.

Before, every one of these got a 201 and the e-mail was retried nine times and dead-lettered,
the address in every log line on the way. An international *domain* is delivered (in its
IDNA form); a non-ASCII local part needs SMTPUTF8 on every hop, so it is refused here.
"""

from __future__ import annotations

import json

import pytest

from tests.booking.fixtures import AUTH, booking_body


@pytest.mark.parametrize("address", ["ädä@bücher.example", "用户@例子.广告", "ada@straße.example"])
def test_an_address_that_cannot_be_delivered_is_a_422_naming_the_field_and_never_echoing_it(client, address):
    response = client.post("/v1/bookings", json=booking_body(email=address), headers=AUTH)
    assert response.status_code == 422, response.json
    details = response.json["error"]["details"]
    assert "customer" in json.dumps(details) and "email" in json.dumps(details)
    assert "ASCII" in json.dumps(details)
    assert address not in response.get_data(as_text=True)
    assert address.split("@")[0] not in json.dumps(details, ensure_ascii=False)


def test_an_international_domain_is_accepted_as_given(client):
    response = client.post("/v1/bookings", json=booking_body(email="ada@bücher.example"), headers=AUTH)
    assert response.status_code == 201, response.json
    assert response.json["customer"]["email"] == "ada@bücher.example"
