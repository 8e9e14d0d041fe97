"""What a worker does around its tasks, hooked into Celery's signals and consumer steps.

* logging: structlog instead of Celery's handlers (``setup_logging``);
* the topology (DLX, DLQs, receipts exchange) and the metrics endpoint when the worker starts (``worker_init``);
* this process's receipts publisher: started when the worker is ready, stopped at shutdown;
* the stall watchdog, a consumer step that makes a stuck consumer reconnect;
* the channel hold, a consumer step that stops taking a channel's messages while all its providers refuse calls.

Connected by :func:`install` from the app factory rather than at import, so
importing a module never changes what Celery does.
"""

from __future__ import annotations

from celery import Celery, signals

from notification_service.broker import topology
from notification_service.settings import Settings
from notification_service.worker.channel_hold import ChannelHold
from notification_service.worker.watchdog import StallWatchdog


def install(app: Celery) -> None:
    """Connect the handlers (once per process, however many apps are created) and add the watchdog to ``app``."""
    signals.setup_logging.connect(_setup_logging, dispatch_uid="notification_service.setup_logging")
    signals.worker_init.connect(_declare_topology, dispatch_uid="notification_service.declare_topology")
    signals.worker_ready.connect(_start_receipts, dispatch_uid="notification_service.start_receipts")
    signals.worker_shutdown.connect(_stop_receipts, dispatch_uid="notification_service.stop_receipts")
    app.steps["consumer"].add(StallWatchdog)
    app.steps["consumer"].add(ChannelHold)


def _setup_logging(loglevel=None, **_kwargs) -> None:
    # Connecting to this signal stops Celery from installing its own handlers.
    from notification_service.runtime import logs

    logs.configure(Settings.from_env().log_format, loglevel or "WARNING")


def _declare_topology(sender=None, **_kwargs) -> None:
    """Declare DLX and DLQs (Celery only declares the queues it consumes) and start metrics."""
    app = sender.app
    # Without the workers' read timeout (app.py): declaring a new quorum queue waits for its members to start,
    # which on a loaded cluster may take longer, and this runs once, before any consumer.
    with app.connection_for_write(transport_options={"read_timeout": None}) as connection:
        topology.declare(connection)
    from notification_service.runtime import metrics

    metrics.start(app.settings.metrics_port, str(app.settings.metrics_addr))


def _start_receipts(sender=None, **_kwargs) -> None:
    """Every worker process publishes the receipts outbox (its own connection, a daemon thread)."""
    from notification_service.receipts.lifecycle import start_publisher

    start_publisher(sender.app.settings)


def _stop_receipts(**_kwargs) -> None:
    from notification_service.receipts.lifecycle import stop_publisher

    stop_publisher()
