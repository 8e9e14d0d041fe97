"""Celery's native delayed delivery set up once, through the node the consumer is connected to.

Stock Celery 5.7 (``DelayedDelivery``) declares the ``celery_delayed_*``
exchanges and queues, and binds the lanes to them, once per URL of
``broker_url``, taking the ``;``-separated URLs for separate brokers. Ours are
the nodes of one cluster, which share every exchange, queue and binding, and
the step runs before the consumer's event loop: after a node was killed, each
reconnect first retried the dead node (1 + 3 + 5 s of sleeps and refused
connects) and took no message for ~15 s (tests/e2e/mesh/test_cluster.py). One
setup through the node the consumer just reached is the same topology, at once.
"""

from __future__ import annotations

from celery.utils.log import get_logger
from celery.worker.consumer import Consumer
from celery.worker.consumer.delayed_delivery import MAX_RETRIES, RETRIED_EXCEPTIONS, RETRY_INTERVAL, DelayedDelivery
from kombu.utils.functional import retry_over_time
from kombu.utils.url import maybe_sanitize_url

logger = get_logger(__name__)

#: Where Celery's consumer blueprint names the stock step (replaced by ``ClusterDelayedDelivery``).
STOCK_STEP = "celery.worker.consumer.delayed_delivery:DelayedDelivery"


class ClusterDelayedDelivery(DelayedDelivery):
    """``DelayedDelivery`` against the connected node only (the cluster shares the topology)."""

    def start(self, c: Consumer) -> None:
        self._validate_configuration(c.app)
        url = c.connection.as_uri(include_password=True)
        try:
            retry_over_time(self._setup_delayed_delivery, args=(c, url), catch=RETRIED_EXCEPTIONS,
                            errback=self._on_retry, interval_start=RETRY_INTERVAL, max_retries=MAX_RETRIES)
        except Exception as exc:  # as stock Celery: retries then wait in a worker, not in the broker; log it
            logger.critical("Failed to set up delayed delivery through %r: %s; native delayed delivery "
                            "will not be available", maybe_sanitize_url(url), exc)


def consumer_steps(steps: list[str]) -> list[str]:
    """Celery's consumer steps with the stock delayed delivery replaced by ``ClusterDelayedDelivery``."""
    return [f"{__name__}:ClusterDelayedDelivery" if step == STOCK_STEP else step for step in steps]
