"""gunicorn settings of the webhook receiver (``notification-service webhooks``), from ``Settings.from_env()``.

Threaded sync workers (``gthread``): each event is one short database transaction, and a provider that
sends slowly holds a thread, not a process. Bodies are capped by the app (NOTIFICATION_WEBHOOK_MAX_BODY_BYTES).
"""

from notification_service.settings import Settings

_settings = Settings.from_env()

bind = [_settings.webhook_bind]
workers = _settings.webhook_workers
worker_class = "gthread"
threads = 4
timeout = 30
graceful_timeout = 20
keepalive = 5
accesslog = None  # the app logs each event itself, without anything of the body
errorlog = "-"
limit_request_field_size = 8190
control_socket_disable = True  # see booking_service/runtime/gunicorn_conf.py


def app() -> object:
    """The WSGI app gunicorn loads (``notification_service.webhooks.gunicorn_conf:app()``)."""
    from notification_service.runtime.logs import configure
    from notification_service.webhooks.app import create_app

    configure(_settings.log_format, _settings.log_level)
    return create_app(_settings)


def post_worker_init(worker):
    # The worker has loaded the app and accepts from now on.
    worker.log.info("worker ready (pid %s)", worker.pid)
