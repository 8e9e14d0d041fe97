"""Run ``booking-service serve`` (gunicorn) for a test and wait until its workers are ready."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading

from tests import support


class Served:
    """The gunicorn process and its log lines, read as they come."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    def ready_workers(self) -> int:
        return sum("worker ready" in line for line in list(self.lines))


@contextlib.contextmanager
def serve(env: dict, workers: int):
    """gunicorn with ``env``; yields once every worker has loaded the app (gunicorn_conf.post_worker_init)."""
    proc = subprocess.Popen([sys.executable, "-m", "booking_service", "serve"], env={**os.environ, **env,
                                                                                     "BOOKING_WORKERS": str(workers)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    served = Served(proc)
    try:
        # Waits for the workers themselves; the 120 s is only a guard against a hang on a loaded machine.
        support.wait_for(lambda: served.ready_workers() >= workers or proc.poll() is not None, timeout=120,
                         what=f"{workers} gunicorn workers ready")
        assert proc.poll() is None, "".join(served.lines[-30:])
        yield served
    finally:
        proc.terminate()
        proc.wait(30)
