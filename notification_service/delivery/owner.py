"""Who holds a delivery's lease: this process's identity, and whether another owner is known dead.

An owner id is ``host:pid:start`` (``start`` = the process's start time in
clock ticks since boot, so a recycled pid is not mistaken for the old
process). An owner on this host whose process is gone is known dead, and its
lease is taken over at once (a worker killed mid-send and restarted). An owner
on another host is never presumed dead: its lease must run out.
"""

from __future__ import annotations

import functools
import os
import socket


def _start_ticks(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


class ProcessOwner:
    """The lease owner of this process (``delivery.Owner``)."""

    def __init__(self, host: str | None = None, pid: int | None = None) -> None:
        self.host = host or socket.gethostname()
        self.pid = pid or os.getpid()
        self.id = f"{self.host}:{self.pid}:{_start_ticks(self.pid) or '0'}"

    def is_dead(self, other: str) -> bool:
        try:
            host, pid, start = other.rsplit(":", 2)
            pid_number = int(pid)
        except ValueError:
            return False  # not ours to judge: let the lease run out
        if host != self.host or other == self.id:
            return False
        return _start_ticks(pid_number) != start


# Keyed by pid and holding one entry: a forked child asks with its own pid and gets its own owner.
@functools.lru_cache(maxsize=1)
def _owner_of(pid: int) -> ProcessOwner:
    return ProcessOwner(pid=pid)


def process_owner() -> ProcessOwner:
    """This process's owner identity (after a fork, the child's own)."""
    return _owner_of(os.getpid())
