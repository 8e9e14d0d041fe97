"""``notification-service dlq replay`` on the real broker: each dead letter on its own, never stopping part-way.

Issue 15 item 8: one planted dead letter stopped a bulk replay after three
messages, exit 1, without saying which had been replayed, and every later
replay stopped at the same place. Here the DLQs hold one of each kind of
trouble (an x-death naming a missing queue, a body that is not JSON, a copy the
broker returns unroutable, one it nacks) between good ones.
"""

from __future__ import annotations

import json
import urllib.parse
from datetime import UTC, datetime

import pika
import pytest

import shared
from notification_service import cli
from tests.notification.harness import declare_topology
from tests.support import DISPATCH_HIGH, EMAIL_HIGH, PUSH_HIGH, queue_depth


def _vhost(url: str) -> str:
    return urllib.parse.quote(urllib.parse.unquote(urllib.parse.urlsplit(url).path[1:]), safe="")


def _plant(url: str, queue: str, task_id: str, *, body: bytes | None = None, death_queue: str | None = None) -> None:
    """Put a dead letter into ``queue``'s DLQ the way RabbitMQ leaves one (x-death names ``death_queue``)."""
    task = {DISPATCH_HIGH: shared.DISPATCH_TASK, EMAIL_HIGH: shared.EMAIL_TASK,
            PUSH_HIGH: shared.PUSH_TASK}[queue]
    message = shared.task_message(task=task, task_id=task_id, routing_key=queue, kwargs={}, priority=5)
    death = death_queue or queue
    headers = {**message.headers, "x-death": [{"count": 1, "reason": "rejected", "queue": death,
                                               "exchange": shared.EXCHANGE, "routing-keys": [death],
                                               "time": datetime.now(UTC).replace(microsecond=0)}],
               "x-first-death-queue": death}
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(shared.DEAD_LETTER_EXCHANGE, shared.dead_letter_queue(queue),
                              message.body if body is None else body,
                              pika.BasicProperties(headers=headers, **message.properties), mandatory=True)
    finally:
        connection.close()


def _get(url: str, queue: str) -> list[tuple[str, dict]]:
    """Every message in ``queue``: (message id, headers), taken off the queue."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    found = []
    try:
        channel = connection.channel()
        while True:
            method, properties, _body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return found
            found.append((properties.headers["id"], properties.headers))
    finally:
        connection.close()


def _replay(monkeypatch, capsys, url: str, *args: str) -> tuple[int, dict, str]:
    monkeypatch.setenv("AMQP_URL", url)
    code = cli.main(["dlq", "replay", *args])
    out, err = capsys.readouterr()
    return code, json.loads(out), err


@pytest.fixture
def troubled(vhost_url, management):
    """Every kind of trouble planted among good dead letters; the work queues it needs broken, broken."""
    declare_topology(vhost_url)
    _plant(vhost_url, EMAIL_HIGH, "e-not-json", body=b"{not json ada@example.org")
    _plant(vhost_url, EMAIL_HIGH, "e-missing-queue", death_queue="notifications.nowhere")
    _plant(vhost_url, EMAIL_HIGH, "e-good")
    # notifications.push is gone: a replay to it is returned unroutable (mandatory).
    _plant(vhost_url, PUSH_HIGH, "p-unroutable")
    _plant(vhost_url, PUSH_HIGH, "p-unroutable-too")
    connection = pika.BlockingConnection(pika.URLParameters(vhost_url))
    connection.channel().queue_delete(PUSH_HIGH)
    connection.close()
    # notifications.dispatch.high refuses every publish: the broker nacks the replay.
    management.put(f"{management.base}/policies/{_vhost(vhost_url)}/full-dispatch", timeout=10, json={
        "pattern": f"^{DISPATCH_HIGH}$", "apply-to": "queues",
        "definition": {"max-length": 0, "overflow": "reject-publish"}}).raise_for_status()
    # A quorum queue starts refusing once it is *over* its limit: one message puts it there.
    connection = pika.BlockingConnection(pika.URLParameters(vhost_url))
    connection.channel().basic_publish("", DISPATCH_HIGH, b"{}")
    connection.close()
    _plant(vhost_url, DISPATCH_HIGH, "d-nacked")
    return vhost_url


def test_bulk_replay_skips_and_reports_what_it_cannot_route_and_replays_the_rest(troubled, monkeypatch, capsys):
    code, printed, err = _replay(monkeypatch, capsys, troubled, "--all")

    assert code == cli.EXIT_SKIPPED == 1
    assert sorted(printed["replayed"]) == ["e-good", "e-missing-queue"]
    assert set(printed["skipped_poison"]) == {"e-not-json"}
    assert "not JSON" in printed["skipped_poison"]["e-not-json"]
    assert set(printed["skipped_refused"]) == {"d-nacked", "p-unroutable", "p-unroutable-too"}
    assert "nacked" in printed["skipped_refused"]["d-nacked"]
    assert "unroutable" in printed["skipped_refused"]["p-unroutable"]
    # stderr names each one as it goes, then the summary
    assert "replayed e-good from notifications.email.high.dlq to notifications.email.high" in err
    assert "skipped p-unroutable in notifications.push.high.dlq (refused)" in err
    assert err.strip().splitlines()[-1] == "replayed 2, skipped 4"
    assert "ada@example.org" not in err + json.dumps(printed)
    # skipped ones stay where they were; the replayed ones went to the DLQ's own queue, without x-death
    assert queue_depth(troubled, shared.dead_letter_queue(EMAIL_HIGH)) == 1
    assert queue_depth(troubled, shared.dead_letter_queue(PUSH_HIGH)) == 2
    assert queue_depth(troubled, shared.dead_letter_queue(DISPATCH_HIGH)) == 1
    arrived = _get(troubled, EMAIL_HIGH)
    assert sorted(mid for mid, _ in arrived) == ["e-good", "e-missing-queue"]
    assert all(not any(name.startswith("x-death") or name.startswith("x-first") for name in headers)
               for _, headers in arrived)


def test_a_later_replay_does_not_stop_where_the_last_one_skipped(troubled, monkeypatch, capsys):
    _replay(monkeypatch, capsys, troubled, "--all")
    _plant(troubled, EMAIL_HIGH, "e-later")

    code, printed, err = _replay(monkeypatch, capsys, troubled, "--queue", EMAIL_HIGH)

    assert code == 1
    assert printed["replayed"] == ["e-later"] and set(printed["skipped_poison"]) == {"e-not-json"}
    assert err.strip().splitlines()[-1] == "replayed 1, skipped 1"


def test_replay_with_nothing_skipped_exits_0(vhost_url, monkeypatch, capsys):
    declare_topology(vhost_url)
    _plant(vhost_url, EMAIL_HIGH, "e-only")

    code, printed, err = _replay(monkeypatch, capsys, vhost_url, "--queue", EMAIL_HIGH)

    assert (code, printed["replayed"], printed["skipped_refused"]) == (0, ["e-only"], {})
    assert err.strip().splitlines()[-1] == "replayed 1, skipped 0"


def test_a_channel_the_broker_closes_leaves_every_dead_letter_in_place_and_is_reported(vhost_url, monkeypatch,
                                                                                        capsys):
    declare_topology(vhost_url)
    for task_id in ("e-1", "e-2"):
        _plant(vhost_url, EMAIL_HIGH, task_id)
    _plant(vhost_url, PUSH_HIGH, "p-1")
    connection = pika.BlockingConnection(pika.URLParameters(vhost_url))
    connection.channel().exchange_delete(shared.EXCHANGE)  # every publish now closes the channel (404)
    connection.close()

    code, printed, err = _replay(monkeypatch, capsys, vhost_url, "--all")

    assert code == 1 and printed["replayed"] == []
    assert set(printed["skipped_refused"]) == {"e-1", "e-2", "p-1"}
    assert "404" in printed["skipped_refused"]["e-1"] and "not tried" in printed["skipped_refused"]["e-2"]
    assert queue_depth(vhost_url, shared.dead_letter_queue(EMAIL_HIGH)) == 2
    assert queue_depth(vhost_url, shared.dead_letter_queue(PUSH_HIGH)) == 1
