"""One AMQP_URL, one node or a cluster's several (';'-separated, kombu's convention), for pika and kombu alike."""

from __future__ import annotations

import pika
import pytest

from booking_service.runtime import amqp as booking_amqp
from booking_service.settings import Settings, SettingsError
from notification_service.broker import connection as notification_amqp
from shared.amqp_url import for_pika, nodes, pika_urls, redact

CLUSTER = "amqp://u:p@h1:5701/v;amqp://u:p@h2:5702/v; amqp://u:p@h3:5703/v ;"


def test_nodes_splits_on_semicolons_and_drops_blanks():
    assert nodes(CLUSTER) == ["amqp://u:p@h1:5701/v", "amqp://u:p@h2:5702/v", "amqp://u:p@h3:5703/v"]
    assert nodes("amqp://guest:guest@localhost:5672//") == ["amqp://guest:guest@localhost:5672//"]
    with pytest.raises(ValueError):
        nodes(" ; ")


def test_pika_gets_every_node_with_the_default_vhost_spelled_for_it():
    assert for_pika("amqp://guest:guest@localhost:5672//") == "amqp://guest:guest@localhost:5672/%2F"
    assert sorted(pika_urls("amqp://a@h1//;amqp://a@h2//")) == ["amqp://a@h1/%2F", "amqp://a@h2/%2F"]
    assert pika_urls(CLUSTER, shuffle=False)[0] == "amqp://u:p@h1:5701/v"


@pytest.mark.parametrize("parameters", [booking_amqp.parameters, notification_amqp.parameters])
def test_both_services_hand_pika_one_parameter_set_per_node(parameters):
    found = parameters(CLUSTER)
    assert all(isinstance(p, pika.URLParameters) for p in found)
    assert sorted((p.host, p.port, p.virtual_host) for p in found) == [("h1", 5701, "v"), ("h2", 5702, "v"),
                                                                     ("h3", 5703, "v")]
    assert all(p.connection_attempts == 1 for p in found)  # the caller's backoff owns retrying


def test_redact_keeps_hosts_and_drops_passwords():
    assert redact(CLUSTER) == "amqp://h1:5701;amqp://h2:5702;amqp://h3:5703"


def test_booking_settings_take_a_cluster_and_refuse_a_node_that_is_no_amqp_url():
    assert Settings(amqp_url=CLUSTER).amqp_url == CLUSTER
    with pytest.raises(SettingsError):
        Settings(amqp_url="amqp://h1//;http://h2/")
    with pytest.raises(SettingsError):
        Settings(amqp_url=";")
