"""The Celery app of the notification service: ``celery -A notification_service.celery_app worker``."""

import sys

from notification_service.settings import EXIT_CONFIG, ConfigError
from notification_service.worker.app import create_app

try:
    app = create_app()
except ConfigError as exc:
    # Celery prints any exception raised while loading the app with its traceback; a bad
    # setting is one line and the exit status of the CLI, so a supervisor tells the two apart.
    print(f"notification worker: invalid setting: {exc}", file=sys.stderr)
    raise SystemExit(EXIT_CONFIG) from None
