"""Subprocesses the deployment tests start (Flower, a worker): bounded waits, clean stops."""

from __future__ import annotations

import subprocess
import time


def wait_until(predicate, *, timeout: float, what: str, alive: subprocess.Popen | None = None, log=None):
    """Poll ``predicate`` until it returns something truthy.

    Fails with ``what`` after ``timeout`` seconds, or at once when ``alive``
    has exited; ``log`` (a callable returning text) is added to the failure.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        detail = f"\n{log()}" if log else ""
        if alive is not None:
            assert alive.poll() is None, f"process exited while waiting for {what}{detail}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}{detail}"
        time.sleep(0.2)


def stop(proc: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM (a Celery warm shutdown), then SIGKILL if it does not end within ``grace``."""
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
