"""A Celery worker logged in as the notification user, delivering what the booking user published."""

from __future__ import annotations

import subprocess
import uuid

import shared
from tests.deploy import processes, repo
from tests.integration.deploy.test_broker_permissions import _env, _example_payload, channel, publish
from tests.support import DISPATCH_HIGH


def test_notification_user_runs_a_worker_that_delivers_what_the_booking_user_published(least_privilege, tmp_path,
                                                                                       management):
    env = _env(least_privilege, tmp_path)
    subprocess.run([str(repo.BIN / "notification-service"), "migrate"], env=env, check=True,
                   capture_output=True, timeout=120)
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [str(repo.BIN / "celery"), "-A", "notification_service.celery_app", "worker",
             "--queues", ",".join(shared.WORK_QUEUES), "--pool", "threads", "--concurrency", "2",
             "--hostname", f"perm-{uuid.uuid4().hex[:6]}@%h", "--without-gossip", "--without-mingle", "--events",
             "--loglevel", "INFO"],
            env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        payload = _example_payload()
        message = shared.task_message(
            task=shared.DISPATCH_TASK, task_id=payload["notification_id"], routing_key=DISPATCH_HIGH,
            kwargs={"message": payload}, priority=shared.Priority.HIGH.value,
            correlation_id=payload["correlation_id"],
        )
        with channel(least_privilege.url("booking")) as ch:
            publish(ch, message)
        processes.wait_until(lambda: list((tmp_path / "email").glob("*")), timeout=60,
                             what="the e-mail file", alive=worker, log=log.read_text)
        assert "ACCESS_REFUSED" not in log.read_text(), log.read_text()
    finally:
        processes.stop(worker)
