"""The Celery app of the notification service: ``celery -A notification_service.celery_app worker``."""

from notification_service.worker.app import create_app

app = create_app()
