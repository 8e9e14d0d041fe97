"""A private, throwaway RabbitMQ node that a test may SIGKILL and restart.

The shared development broker (``rabbit@localhost`` on 5672/15672) must never be
stopped or reconfigured by a test.  Tests (and benchmark scripts) that need to
crash the broker get a node of their own instead::

    from tests.private_broker import PrivateBroker

    with PrivateBroker() as broker:          # started, accepting AMQP
        publish(broker.url)                  # amqp://guest:guest@127.0.0.1:PORT//
        broker.kill()                        # SIGKILL, beam.smp is gone
        broker.restart()                     # same port, same data directory
    # stopped, temp dir removed

or, in pytest, the function-scoped ``private_broker`` fixture defined below
(import it into the test module or a conftest: ``from tests.private_broker
import private_broker  # noqa: F401``).

What makes the node private (RabbitMQ 3.10 reads these in ``rabbit_env``):

* its own node name ``t<hex>@localhost`` and its own distribution port
  (``RABBITMQ_DIST_PORT``), distribution bound to 127.0.0.1 only;
* its own ``HOME`` inside the temp dir, so Erlang creates a *private* cookie
  there: the node could not even authenticate to ``rabbit@localhost``, and
  nothing is written to the developer's ``~/.erlang.cookie``;
* its own config (``RABBITMQ_CONFIG_FILE``, an empty ``RABBITMQ_CONFIG_FILES``
  conf.d, ``RABBITMQ_ADVANCED_CONFIG_FILE``), its own ``RABBITMQ_CONF_ENV_FILE``
  (the system ``/etc/rabbitmq/rabbitmq-env.conf`` sets ``NODENAME=rabbit@localhost``
  and must not be read), ``RABBITMQ_BASE``, ``RABBITMQ_MNESIA_BASE``,
  ``RABBITMQ_LOG_BASE``, ``RABBITMQ_PID_FILE``;
* ``RABBITMQ_ENABLED_PLUGINS_FILE`` holding ``[].``: no management/prometheus
  plugin, so nothing binds 15672/15692; the only listeners are the AMQP port
  and the distribution port, both on 127.0.0.1;
* a fresh Mnesia directory and no ``cluster_formation`` settings: it is a
  standalone node and never tries to cluster.

It shares the machine's epmd (port 4369) like every Erlang node does; it only
registers its own name there.  If no epmd is running, the node starts one, which
(as always with Erlang) outlives the node.

Process handling: the server runs in the foreground with
``RABBITMQ_ALLOW_INPUT=1``, which makes ``rabbitmq-server`` ``exec`` the Erlang
VM, so the ``Popen`` child *is* ``beam.smp`` (in a new session) and can be
waited on.  Its stdin is a pipe this process holds open and never writes to:
should the test process die without cleaning up (even by SIGKILL), the Erlang
shell reads EOF and halts the node.  ``kill()`` SIGKILLs the process group and
every descendant (``erl_child_setup`` puts itself in a session of its own),
reaps ``beam.smp`` and checks that no process still carries the node's private
directory on its command line.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.support import free_port

__all__ = ["PrivateBroker", "PrivateBrokerError", "find_rabbitmq_server", "private_broker"]

#: Last-resort deadline for a node to accept AMQP connections (seconds).
DEFAULT_START_TIMEOUT = float(os.environ.get("PRIVATE_BROKER_START_TIMEOUT", "60"))

#: Ports the shared node, its plugins or the RabbitMQ CLI tools may use.
_RESERVED_PORTS = {4369, 5671, 5672, 5552, 1883, 8883, 61613, 61614, 15672, 15674, 15675, 15692, 25672} | set(
    range(35672, 35683)
)

_IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


class PrivateBrokerError(RuntimeError):
    """The private node could not be started, or would not die."""


def find_rabbitmq_server() -> str | None:
    """Path of a ``rabbitmq-server`` script that can run as the current user, or None.

    ``$RABBITMQ_SERVER`` wins.  On Debian/Ubuntu ``/usr/sbin/rabbitmq-server`` is a
    wrapper that ``su``'s to the ``rabbitmq`` user and redirects output to
    ``/var/log/rabbitmq``; the real script is in ``/usr/lib/rabbitmq/bin``.
    """
    explicit = os.environ.get("RABBITMQ_SERVER")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    debian = "/usr/lib/rabbitmq/bin/rabbitmq-server"
    if os.access(debian, os.X_OK):
        return debian
    found = shutil.which("rabbitmq-server", path=os.environ.get("PATH", "") + ":/usr/sbin:/usr/local/sbin")
    if found is None:
        return None
    try:
        if "Only root or rabbitmq should run" in Path(found).read_text(errors="replace"):
            return None  # a packaging wrapper we cannot use, and the real script is not where Debian puts it
    except OSError:
        return None
    return found


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _private_port(taken: set[int]) -> int:
    """A free loopback port, preferably *below* the kernel's ephemeral range.

    The broker's port stays reserved for it across ``kill()``/``restart()``; while
    the node is down, a port inside the ephemeral range could be handed to some
    client socket's local end and the restart would fail with ``eaddrinuse``.
    Falls back to :func:`tests.support.free_port`.
    """
    low = 32768
    with contextlib.suppress(OSError, ValueError, IndexError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.SystemRandom()
    if low > 12000:
        for _ in range(200):
            port = rng.randrange(10000, low)
            if port not in _RESERVED_PORTS and port not in taken and _bindable(port):
                return port
    for _ in range(50):
        port = free_port()
        if port not in _RESERVED_PORTS and port not in taken:
            return port
    raise PrivateBrokerError("no free loopback port found")


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, command line) for every live (non-zombie) process."""
    table: dict[int, tuple[int, str]] = {}
    if os.path.isdir("/proc/self"):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as fh:
                    stat = fh.read().decode(errors="replace")
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2 :].split()
            if fields[0] == "Z":
                continue  # a zombie is dead already (nothing reaps orphans in some containers)
            table[int(entry)] = (int(fields[1]), cmdline)
        return table
    out = subprocess.run(["ps", "-A", "-o", "pid=,ppid=,stat=,args="], capture_output=True, text=True).stdout
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) >= 3 and not parts[2].startswith("Z"):
            table[int(parts[0])] = (int(parts[1]), parts[3] if len(parts) > 3 else "")
    return table


def _descendants(root: int, table: dict[int, tuple[int, str]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


class PrivateBroker:
    """A RabbitMQ node of one's own, on 127.0.0.1, that may be SIGKILLed and restarted.

    ``PrivateBroker()`` only prepares the directories; ``start()`` (or ``with``)
    boots it.  ``kill()`` crashes it, ``restart()`` boots it again on the same
    port with the same data, ``stop()`` kills it and deletes everything.
    """

    host = "127.0.0.1"
    user = "guest"
    password = "guest"

    def __init__(
        self,
        *,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        server: str | None = None,
        keep_dir: bool = bool(os.environ.get("PRIVATE_BROKER_KEEP_DIR")),
        extra_config: str = "",
    ) -> None:
        self.server = server or find_rabbitmq_server()
        if not self.server:
            raise PrivateBrokerError("rabbitmq-server is not installed (set $RABBITMQ_SERVER to its path)")
        self.start_timeout = start_timeout
        self.keep_dir = keep_dir
        short = "t" + uuid.uuid4().hex[:10]
        self.node_name = f"{short}@localhost"
        #: The private directory's name carries the node name, and beam.smp's command
        #: line carries the directory (``-home``): that is what ``pids()`` looks for.
        self.base_dir = Path(tempfile.mkdtemp(prefix=f"private-rabbit-{short}-"))
        self._marker = self.base_dir.name
        self.port = _private_port(set())
        self.dist_port = _private_port({self.port})
        self.home_dir = self.base_dir / "home"
        self.mnesia_base = self.base_dir / "mnesia"
        self.log_dir = self.base_dir / "log"
        self.conf_d = self.base_dir / "conf.d"
        self.config_file = self.base_dir / "rabbitmq.conf"
        self.console_log = self.log_dir / "console.log"
        for path in (self.home_dir, self.mnesia_base, self.log_dir, self.conf_d):
            path.mkdir(parents=True)
        self.config_file.write_text(
            "\n".join(
                [
                    f"listeners.tcp.default = 127.0.0.1:{self.port}",
                    "listeners.ssl = none",
                    "loopback_users.guest = true",
                    "default_user = guest",
                    "default_pass = guest",
                    "default_vhost = /",
                    "log.console = true",
                    "log.console.level = info",
                    "log.file.level = info",
                    extra_config,
                    "",
                ]
            )
        )
        (self.base_dir / "advanced.config").write_text("[].\n")
        (self.base_dir / "enabled_plugins").write_text("[].\n")
        (self.base_dir / "rabbitmq-env.conf").write_text(
            "# intentionally empty: do not read /etc/rabbitmq/rabbitmq-env.conf\n")
        self._proc: subprocess.Popen | None = None
        self._console = None
        self._lock = threading.RLock()
        self._closed = False
        #: Seconds the last start()/restart() took until AMQP answered.
        self.last_start_seconds: float | None = None
        _LIVE.add(self)

    # ------------------------------------------------------------------ info

    @property
    def url(self) -> str:
        return f"amqp://{self.user}:{self.password}@{self.host}:{self.port}//"

    @property
    def pika_url(self) -> str:
        """The same address in pika's spelling (pika reads ``//`` as the empty vhost)."""
        return f"amqp://{self.user}:{self.password}@{self.host}:{self.port}/%2F"

    def pika_parameters(self, **overrides):
        """``pika.ConnectionParameters`` for this node; keyword arguments override the defaults."""
        import pika  # noqa: PLC0415

        options = {
            "host": self.host,
            "port": self.port,
            "virtual_host": "/",
            "credentials": pika.PlainCredentials(self.user, self.password),
            "connection_attempts": 1,
            "socket_timeout": 5,
        }
        options.update(overrides)
        return pika.ConnectionParameters(**options)

    @property
    def pid(self) -> int | None:
        """pid of beam.smp while the node runs."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def environment(self) -> dict[str, str]:
        """The environment the node (and ``ctl()``) runs with."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("RABBITMQ_", "ERL_")) or key in {"ERL_EPMD_PORT", "ERL_EPMD_ADDRESS"}
        }
        base = self.base_dir
        env.update(
            HOME=str(self.home_dir),
            ERL_EPMD_ADDRESS=env.get("ERL_EPMD_ADDRESS", "127.0.0.1"),  # only matters if this node starts epmd
            RABBITMQ_NODENAME=self.node_name,
            RABBITMQ_USE_LONGNAME="false",
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_BASE=str(base),
            RABBITMQ_CONF_ENV_FILE=str(base / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(self.config_file),
            RABBITMQ_CONFIG_FILES=str(self.conf_d),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(base / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(base / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(self.mnesia_base),
            RABBITMQ_LOG_BASE=str(self.log_dir),
            RABBITMQ_PID_FILE=str(base / "rabbitmq.pid"),
            RABBITMQ_MOTD_FILE=str(base / "motd"),
            RABBITMQ_ALLOW_INPUT="1",  # exec beam.smp directly; EOF on stdin halts it
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    def log_tail(self, lines: int = 60) -> str:
        """The last lines of the console output and of the node's log file."""
        parts = []
        for path in (self.console_log, self.log_dir / f"{self.node_name}.log"):
            try:
                text = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            parts.append(f"--- {path} (last {lines} lines)\n" + "\n".join(text[-lines:]))
        return "\n".join(parts) or "(no log written)"

    def pids(self) -> list[int]:
        """Live processes whose command line carries this node's private directory (beam.smp)."""
        return sorted(pid for pid, (_, cmd) in _proc_table().items() if self._marker in cmd and pid != os.getpid())

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run ``rabbitmqctl -n NODE ARGS`` against this node (same private cookie)."""
        ctl = str(Path(self.server).with_name("rabbitmqctl"))
        return subprocess.run(
            [ctl, "-n", self.node_name, *args],
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    # -------------------------------------------------------------- lifecycle

    def start(self, timeout: float | None = None) -> PrivateBroker:
        """Boot the node; return once a pika connection can open a channel on it."""
        with self._lock:
            if self._closed:
                raise PrivateBrokerError("this PrivateBroker was stopped; make a new one")
            if self.running:
                return self
            self._spawn()
            began = time.monotonic()
            try:
                self._wait_until_ready(timeout if timeout is not None else self.start_timeout)
            except BaseException:
                self.kill()
                raise
            self.last_start_seconds = time.monotonic() - began
            return self

    def restart(self, timeout: float | None = None) -> PrivateBroker:
        """Start again on the same port with the same Mnesia directory (kills first if still running)."""
        self.kill()
        return self.start(timeout)

    def kill(self) -> None:
        """SIGKILL beam.smp and all its descendants, reap it, and check nothing of it survives."""
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is not None:
                table = _proc_table()
                doomed = _descendants(proc.pid, table)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: pgid == pid
                for pid in [proc.pid, *doomed]:  # erl_child_setup & co. run in sessions of their own
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    raise PrivateBrokerError(f"beam.smp pid {proc.pid} did not die after SIGKILL") from None
                finally:
                    self._close_pipes(proc)
            # Anything else still carrying our directory (a stray from an earlier failure)?
            deadline = time.monotonic() + 10
            while True:
                left = self.pids()
                if not left:
                    break
                for pid in left:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                if time.monotonic() > deadline:
                    raise PrivateBrokerError(f"processes of {self.node_name} survive SIGKILL: {left}")
                time.sleep(0.05)

    def stop(self) -> None:
        """Kill the node and delete its directory (unless ``keep_dir``); idempotent."""
        with self._lock:
            try:
                self.kill()
            finally:
                if not self._closed:
                    self._closed = True
                    _LIVE.discard(self)
                    if not self.keep_dir:
                        shutil.rmtree(self.base_dir, ignore_errors=True)

    close = stop

    def __enter__(self) -> PrivateBroker:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "down"
        return f"<PrivateBroker {self.node_name} {self.url} {state}>"

    # -------------------------------------------------------------- internals

    def _spawn(self) -> None:
        if not _bindable(self.port):
            raise PrivateBrokerError(f"port {self.port} of {self.node_name} is taken by another process")
        self._console = open(self.console_log, "ab")  # noqa: SIM115 - closed in kill()
        self._console.write(f"\n===== {time.strftime('%H:%M:%S')} starting {self.node_name}\n".encode())
        self._console.flush()
        self._proc = subprocess.Popen(
            [self.server],
            env=self.environment(),
            cwd=self.base_dir,
            stdin=subprocess.PIPE,  # held open, never written: EOF (our death) halts the node
            stdout=self._console,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group; Ctrl-C in the terminal does not reach it
        )

    def _close_pipes(self, proc: subprocess.Popen) -> None:
        for stream in (proc.stdin, self._console):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        self._console = None

    def _wait_until_ready(self, timeout: float) -> None:
        import pika  # noqa: PLC0415 - only needed once a node runs

        params = self.pika_parameters(socket_timeout=2, blocked_connection_timeout=5, heartbeat=0)
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                raise PrivateBrokerError(
                    f"RabbitMQ node {self.node_name} exited (code {code}) before accepting AMQP on "
                    f"127.0.0.1:{self.port}\n{self.log_tail()}"
                )
            # Cheap TCP probe first: the AMQP listener is opened at the very end of boot.
            try:
                socket.create_connection((self.host, self.port), timeout=1).close()
            except OSError as exc:
                last_error = exc
            else:
                try:
                    connection = pika.BlockingConnection(params)
                    try:
                        connection.channel().close()
                    finally:
                        connection.close()
                    return
                except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
                    last_error = exc
            if time.monotonic() > deadline:
                raise PrivateBrokerError(
                    f"RabbitMQ node {self.node_name} did not accept AMQP on 127.0.0.1:{self.port} within "
                    f"{timeout:.0f}s (last error: {last_error!r})\n{self.log_tail()}"
                )
            time.sleep(0.1)


#: Brokers not yet stopped; atexit stops them as a last resort.
_LIVE: set[PrivateBroker] = set()


@atexit.register
def _stop_leftovers() -> None:
    for broker in list(_LIVE):
        # Best effort at interpreter exit: one broker that fails to stop must not keep the others running.
        with contextlib.suppress(Exception):
            broker.stop()


@pytest.fixture
def private_broker():
    """A started :class:`PrivateBroker` for one test; killed and deleted afterwards.

    Skipped when ``rabbitmq-server`` is not installed, but *fails* under ``CI=true``.
    """
    if find_rabbitmq_server() is None:
        message = "rabbitmq-server is not installed (needed for a private, killable RabbitMQ node)"
        if _IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    broker = PrivateBroker()
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
