"""Flower started as docker-compose.yml starts it, against the real broker."""

from __future__ import annotations

import os
import subprocess

import requests

from tests.deploy import processes, repo
from tests.support import free_port
from tests.unit.deploy.test_compose import argv_of, env_of


def test_flower_as_composed_refuses_visitors_without_the_password(least_privilege, tmp_path):
    """Flower with the compose command and env, logged in as the least-privilege notification user."""
    port = free_port()
    argv = [a for a in argv_of("flower") if not a.startswith("--port")] + [f"--port={port}", "--address=127.0.0.1"]
    env = {**os.environ, **env_of("flower"), "AMQP_URL": least_privilege.url("notification"),
           "NOTIFICATION_DATABASE_URL": f"sqlite:///{tmp_path / 'n.db'}", "NOTIFICATION_LOG_FORMAT": "console"}
    env.pop("NOTIFICATION_METRICS_PORT", None)
    user, password = env["FLOWER_BASIC_AUTH"].split(",")[0].split(":", 1)
    log = tmp_path / "flower.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(repo.BIN / argv[0]), *argv[1:]], env=env, cwd=tmp_path,
                                stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        health = processes.wait_until(lambda: _get(f"{base}/healthcheck"), timeout=30, what="flower to answer",
                                      alive=proc, log=log.read_text)
        assert health.status_code == 200
        assert requests.get(f"{base}/workers", timeout=5).status_code == 401
        assert requests.get(f"{base}/workers", auth=(user, "wrong"), timeout=5).status_code == 401
        assert requests.get(f"{base}/workers", auth=(user, password), timeout=5).status_code == 200
    finally:
        processes.stop(proc)


def _get(url: str):
    try:
        return requests.get(url, timeout=2)
    except requests.ConnectionError:
        return None
