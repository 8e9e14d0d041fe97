"""The Celery app of the notification service: ``celery -A notification_service.celery_app worker``."""

from .app_factory import create_app

app = create_app()
