"""Provider outages for ``bench_faults.py`` (issue 17's benchmark scenarios (a) and (b)).

    .venv/bin/python benchmarks/bench_faults.py --scenario primary-down [--keep-logs]
    .venv/bin/python benchmarks/bench_faults.py --scenario all-down [--keep-logs]
    .venv/bin/python benchmarks/bench_faults.py --provider-outage email@20:30 --outage-mode refuse-503 \\
        --email-providers http,file --rate 5 --duration 80 --faults none --p503 0 --phang 0

* ``primary-down`` (a): the fake HTTP e-mail provider, first in ``EMAIL_PROVIDERS=http,file``, is down
  for 300 s from t=20 s: the first half it refuses connections (its listening socket is closed and its
  open keep-alive connections are shut), the second half it answers 503. Push stays up. Bookings at
  5/s for 350 s (20 s before, the 300 s, 30 s after).
* ``all-down`` (b): both fake HTTP providers (e-mail and push, no secondary) answer 503 to every call
  for 900 s from t=20 s; bookings at 5/s for 120 s, then the script waits for recovery and the drain.

A scenario only sets defaults (rate, duration, no process faults, a provider that does not fail
outside the outage, drain deadline); every option given on the command line wins.

The e-mail provider listens on a port of its own (so it can refuse while push answers). The file
sink (``EMAIL_FILE_DIR``) is watched with inotify: every ``<delivery id>.eml`` renamed into place
is a delivery accepted by the secondary, recorded like an accepted HTTP call (outcome ``file``)
with the delivery id as its key, so "accepted", latency and duplicates (a second rename, or a file
for a delivery the HTTP provider also accepted) count both providers. A refused connection never
reaches the fake: those calls are counted from the workers' logs ("failover" and "retrying" lines
saying the provider was unreachable).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import email.parser
import json
import os
import pathlib
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from benchmarks.bench_faults import Call, FakeProvider, log, pct

#: Defaults each scenario gives bench_faults' options (the command line still wins).
SCENARIOS: dict[str, dict[str, object]] = {
    "primary-down": {
        "rate": 5.0, "duration": 350.0, "faults": "none", "p503": 0.0, "phang": 0.0,
        "provider_outage": "email@20:300", "outage_mode": "refuse-503", "email_providers": "http,file",
        "drain_timeout": 600.0,
    },
    "all-down": {
        "rate": 5.0, "duration": 120.0, "faults": "none", "p503": 0.0, "phang": 0.0,
        "provider_outage": "all@20:900", "outage_mode": "503",
        # The outage ends 800 s after the load; then a breaker may wait up to 300 s for its next probe
        # and a retry up to NOTIFICATION_RETRY_MAX_SECONDS (900 s).
        "drain_timeout": 2100.0,
    },
}
MODES = ("refuse", "503", "refuse-503")
#: Each scenario's TARGET lines: (p95 booking → accepted at most, calls per delivery during the outage below).
TARGETS: dict[str, tuple[float | None, float | None]] = {"primary-down": (10.0, None), "all-down": (None, 2.0)}

IN_MOVED_TO = 0x00000080
IN_Q_OVERFLOW = 0x00004000
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)


def add_arguments(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """The outage options, and the defaults of the ``--scenario`` named in ``argv`` (options given still win)."""
    group = parser.add_argument_group("provider outages (issue 17's (a) and (b): --scenario primary-down or "
                                      "all-down sets these and the load's defaults)")
    group.add_argument("--provider-outage", default=None, metavar="WHO@START:SECONDS",
                       help="WHO (email, push or all) down from START for SECONDS (seconds since the load started)")
    group.add_argument("--outage-mode", choices=MODES, default="503",
                       help="refuse connections, answer 503, or refuse the first half and answer 503 the second")
    group.add_argument("--email-providers", default="", help="EMAIL_PROVIDERS for the workers (e.g. http,file)")
    group.add_argument("--push-providers", default="", help="PUSH_PROVIDERS for the workers")
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--scenario")
    known, _ = first.parse_known_args(argv)
    if known.scenario in SCENARIOS:
        parser.set_defaults(**SCENARIOS[known.scenario])


def wanted(args: argparse.Namespace) -> bool:
    return bool(args.provider_outage or args.email_providers or args.push_providers)


@dataclass(frozen=True)
class Outage:
    channels: tuple[str, ...]
    start: float     # seconds since the load started
    seconds: float
    mode: str

    @property
    def end(self) -> float:
        return self.start + self.seconds

    def describe(self) -> str:
        return f"{'+'.join(self.channels)} {self.mode} from {self.start:g} s for {self.seconds:g} s"


def parse_outage(spec: str | None, mode: str) -> Outage | None:
    if not spec:
        return None
    who, _, when = spec.partition("@")
    start, _, seconds = when.partition(":")
    channels = ("email", "push") if who == "all" else tuple(part for part in who.split("+") if part)
    try:
        outage = Outage(channels, float(start), float(seconds), mode)
    except ValueError:
        raise SystemExit(f"--provider-outage: {spec!r} is not WHO@START:SECONDS") from None
    if not channels or set(channels) - {"email", "push"} or outage.seconds <= 0:
        raise SystemExit(f"--provider-outage: {spec!r}: WHO is email, push, email+push or all; SECONDS > 0")
    if "refuse" in mode and "push" in channels:
        raise SystemExit("--outage-mode refuse*: only the e-mail provider has a port of its own to close")
    return outage


def worker_env(args: argparse.Namespace, provider: OutageProvider) -> dict[str, str]:
    env = {"EMAIL_FILE_DIR": str(provider.file_dir), "EMAIL_HTTP_URL": provider.email_url}
    if args.email_providers:
        env["EMAIL_PROVIDERS"] = args.email_providers
    if args.push_providers:
        env["PUSH_PROVIDERS"] = args.push_providers
    return env


# ---------------------------------------------------------------------------------------------
# The fake providers with an outage switch, and the file sink's watcher
# ---------------------------------------------------------------------------------------------

class OutageProvider(FakeProvider):
    """FakeProvider whose e-mail API has a port of its own, that can refuse connections or answer 503 on demand."""

    def __init__(self, p503: float, phang: float, hang_seconds: float, seed: int | None,
                 file_dir: pathlib.Path) -> None:
        self.connections: set[socket.socket] = set()
        self.down: dict[str, str] = {}   # channel → "503" while it answers 503
        super().__init__(p503, phang, hang_seconds, seed)
        self._track(self.server)
        self.email_server = self._track(self._server())
        self.email_port = self.email_server.server_address[1]
        self.email_thread: threading.Thread | None = None
        self.refusing = False
        self.file_dir = file_dir
        file_dir.mkdir(parents=True, exist_ok=True)
        self.watcher = FileSinkWatcher(file_dir, self._file_written)

    @property
    def email_url(self) -> str:
        return super().email_url.replace(f":{self.port}/", f":{self.email_port}/")

    def start(self) -> OutageProvider:
        super().start()
        self._serve_email()
        self.watcher.start()
        return self

    def stop(self) -> None:
        self.watcher.stop()
        if not self.refusing:
            self.email_server.shutdown()
            self.email_server.server_close()
        super().stop()

    def decide(self, channel: str) -> str:
        if channel in self.down:
            return self.down[channel]
        return super().decide(channel)

    def answer_503(self, channel: str) -> None:
        self.down[channel] = "503"

    def recover(self, channel: str) -> None:
        self.down.pop(channel, None)

    def refuse_email(self) -> None:
        """Close the e-mail API's listening socket and its open connections: every new call is refused."""
        self.down["email"] = "503"  # a request slipping in while the socket closes is answered 503
        self.refusing = True
        server = self.email_server
        server.shutdown()
        server.socket.close()
        with self.lock:
            connections = list(self.connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        server.server_close()

    def listen_email(self) -> None:
        """Listen again on the same port."""
        if self.refusing:
            self.email_server = self._track(self._server(self.email_port))
            self.refusing = False
            self._serve_email()

    def _serve_email(self) -> None:
        self.email_thread = threading.Thread(target=self.email_server.serve_forever, name="fake-email", daemon=True)
        self.email_thread.start()

    def _track(self, server):
        """Remember the server's open connections, so that refusing can shut the keep-alive ones too."""
        process, close = server.process_request, server.shutdown_request

        def opened(request, client_address):
            with self.lock:
                self.connections.add(request)
            process(request, client_address)

        def closed(request):
            with self.lock:
                self.connections.discard(request)
            close(request)

        server.process_request, server.shutdown_request = opened, closed
        return server

    def _file_written(self, name: str, at: float) -> None:
        if not name.endswith(".eml"):
            return
        headers: dict[str, str] = {}
        try:
            with open(self.file_dir / name, "rb") as handle:
                headers = dict(email.parser.BytesHeaderParser().parse(handle).items())
        except OSError as exc:  # counted without its booking: it shows as a call for an unknown booking
            log(None, f"file sink: {name} unreadable: {exc!r}")
        self.record(Call("email", name.removesuffix(".eml"), headers.get("X-Booking-Id"),
                         headers.get("X-Notification-Event"), headers.get("X-Notification-Id"), "file", at, at))


class FileSinkWatcher:
    """Calls ``on_file(name, monotonic time)`` for every file renamed into ``directory`` (inotify IN_MOVED_TO).

    The file sink writes a temporary file and renames it into place, once per send: every rename is a
    delivery, also a second one of the same name that polling the folder would miss.
    """

    def __init__(self, directory: pathlib.Path, on_file: Callable[[str, float], None]) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, os.fsencode(directory), IN_MOVED_TO) < 0:
            raise OSError(ctypes.get_errno(), f"inotify on {directory}")
        self.on_file = on_file
        self.overflows = 0
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._run, name="file-sink-watcher", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.closing.set()
        self.thread.join(5)
        os.close(self.fd)

    def _run(self) -> None:
        while not self.closing.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.5)
            if not ready:
                continue
            at = time.monotonic()
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                continue
            offset = 0
            while offset < len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size: offset + _EVENT.size + length].rstrip(b"\0").decode()
                offset += _EVENT.size + length
                if mask & IN_Q_OVERFLOW:
                    self.overflows += 1
                elif name:
                    self.on_file(name, at)


# ---------------------------------------------------------------------------------------------
# The outage's schedule
# ---------------------------------------------------------------------------------------------

def run_outage(outage: Outage, t0: float, stop: threading.Event, provider: OutageProvider,
               note: Callable[[str], None]) -> None:
    """Take the providers down at ``outage.start`` and bring them back at ``outage.end`` (seconds after ``t0``)."""
    half = outage.start + outage.seconds / 2 if outage.mode == "refuse-503" else None
    if stop.wait(max(0.0, t0 + outage.start - time.monotonic())):
        return
    try:
        if outage.mode in ("refuse", "refuse-503"):
            provider.refuse_email()
            note("e-mail provider DOWN: refusing connections")
        for channel in outage.channels if outage.mode == "503" else ():
            provider.answer_503(channel)
            note(f"{channel} provider DOWN: answering 503")
        if half is not None:
            if stop.wait(max(0.0, t0 + half - time.monotonic())):
                return
            provider.listen_email()
            note("e-mail provider listening again, answering 503")
        if stop.wait(max(0.0, t0 + outage.end - time.monotonic())):
            return
        provider.listen_email()
        for channel in outage.channels:
            provider.recover(channel)
        note(f"{'+'.join(outage.channels)} provider(s) RECOVERED")
    except Exception as exc:  # noqa: BLE001 - report it on the timeline; the run goes on
        note(f"outage switch failed: {exc!r}")


# ---------------------------------------------------------------------------------------------
# The scenario's row
# ---------------------------------------------------------------------------------------------

def unreachable_calls(root: pathlib.Path, wall_t0: float, t0: float) -> list[float]:
    """Monotonic times of calls the workers logged as refused (never seen by the fake): a failover or a retry
    whose reason says the provider was unreachable."""
    times = []
    for name in ("worker", "dispatch", "send"):
        path = root / f"{name}.log"
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if "unreachable" not in line or not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
                at = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp() - wall_t0 + t0
            except (ValueError, KeyError):
                continue
            if entry.get("event") in ("failover", "retrying"):
                times.append(at)
    return times


#: Worker log events worth counting in a provider outage.
OUTAGE_EVENTS = ("breaker opened", "breaker closed", "failover", "retrying", "dead-lettered")


def log_events(root: pathlib.Path) -> dict[str, int]:
    counts = dict.fromkeys(OUTAGE_EVENTS, 0)
    for name in ("worker", "dispatch", "send"):
        path = root / f"{name}.log"
        if path.exists():
            text = path.read_text(errors="replace")
            for event in OUTAGE_EVENTS:
                counts[event] += text.count(f'"event": "{event}"')
    return counts


def report(args: argparse.Namespace, outage: Outage | None, t0: float, wall_t0: float, root: pathlib.Path,
           calls: list[Call], expected: list[tuple[str, str]], accepted: dict, committed: dict[str, float],
           dead: int, lost: int, duplicated: int, drained: bool, overflows: int) -> None:
    """The scenario's table row and its TARGET lines."""
    name = args.scenario if args.scenario in SCENARIOS else "custom"
    refused = unreachable_calls(root, wall_t0, t0)
    http_calls = [c for c in calls if c.outcome != "file"]
    files = [c for c in calls if c.outcome == "file"]
    latencies = [call.answered - committed[item[0]] for item, call in accepted.items() if call is not None]
    total_calls = len(calls) + len(refused)
    if outage is not None:
        start, end = t0 + outage.start, t0 + outage.end
        due = [item for item in expected if committed[item[0]] < end
               and (accepted[item] is None or accepted[item].answered >= start)]
        during = sum(1 for c in calls if start <= c.arrived < end) + sum(1 for at in refused if start <= at < end)
        per_outage = during / len(due) if due else float("nan")
        # The backlog of the outage: deliveries booked before the recovery (later bookings are the ongoing load).
        backlog = [call.answered for item, call in accepted.items() if call is not None and committed[item[0]] < end]
        drain = f"{max(0.0, max(backlog, default=end) - end):.1f} s" if drained else "did not drain"
    else:
        due, during, per_outage, drain = [], 0, float("nan"), "n/a (no outage)"
    p95 = pct(latencies, 0.95)
    print(f"\nprovider outage scenario {name}: {outage.describe() if outage else 'no outage'}; "
          f"EMAIL_PROVIDERS={args.email_providers or '(EMAIL_BACKEND=http)'}, "
          f"PUSH_PROVIDERS={args.push_providers or '(PUSH_BACKEND=http)'}; {args.rate:g} bookings/s for "
          f"{args.duration:g} s")
    print(f"  calls: {len(http_calls)} answered by the fake HTTP providers "
          f"({sum(c.outcome == '503' for c in http_calls)} of them 503), {len(refused)} refused (from the worker "
          f"logs), {len(files)} files written by the secondary; inotify overflows {overflows}")
    print("  worker log events: " + ", ".join(f"{event} {count}" for event, count in log_events(root).items()))
    columns = ("scenario", "deliveries", "lost", "dead", "dup in effect", "calls/delivery outage", "overall",
               "p50 s", "p95 s", "max s", "drain after recovery")
    values = (name, str(len(expected)), str(lost), str(dead), str(duplicated),
              f"{per_outage:.2f} ({during}/{len(due)})", f"{total_calls / max(1, len(expected)):.2f}",
              f"{pct(latencies, 0.5):.2f}", f"{p95:.2f}", f"{max(latencies, default=float('nan')):.1f}", drain)
    widths = [max(len(c), len(v)) for c, v in zip(columns, values, strict=True)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print("| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |")
    max_p95, max_calls = TARGETS.get(name, (None, None))
    ok = lost == 0 and dead == 0
    print(f"TARGET {'MET' if ok else 'MISSED'}: ({name}) 0 lost, 0 dead-lettered (lost {lost}, dead {dead})")
    if max_p95 is not None:
        print(f"TARGET {'MET' if p95 <= max_p95 else 'MISSED'}: ({name}) p95 booking → accepted <= {max_p95:g} s "
              f"(p95 {p95:.2f} s)")
    if max_calls is not None:
        print(f"TARGET {'MET' if per_outage < max_calls else 'MISSED'}: ({name}) provider calls per delivery during "
              f"the outage < {max_calls:g} ({per_outage:.2f})")
