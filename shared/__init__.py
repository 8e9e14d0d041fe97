"""The message contract between the booking service and the notification service.

Pure: schemas, names and the Celery v2 envelope; no I/O, no service imports.
"""

from .messages import (
    NOTIFICATION_REQUESTED,
    NotificationRequestedV1,
    StrictNotificationRequestedV1,
    dump_notification_requested,
    load_notification_requested,
    validate_notification_requested,
)
from .names import (
    CHANNEL_EMAIL,
    CHANNEL_PUSH,
    DEAD_LETTER_EXCHANGE,
    DEFAULT_PRIORITY,
    DISPATCH_QUEUE,
    DISPATCH_TASK,
    EMAIL_QUEUE,
    EMAIL_TASK,
    EXCHANGE,
    MAX_PRIORITY,
    PUSH_QUEUE,
    PUSH_TASK,
    TASK_QUEUES,
    WORK_QUEUES,
    Event,
    Priority,
    dead_letter_queue,
)
from .wire import TaskMessage, decode_body, task_message

__all__ = [
    "CHANNEL_EMAIL",
    "CHANNEL_PUSH",
    "DEAD_LETTER_EXCHANGE",
    "DEFAULT_PRIORITY",
    "DISPATCH_QUEUE",
    "DISPATCH_TASK",
    "EMAIL_QUEUE",
    "EMAIL_TASK",
    "EXCHANGE",
    "MAX_PRIORITY",
    "NOTIFICATION_REQUESTED",
    "NotificationRequestedV1",
    "PUSH_QUEUE",
    "PUSH_TASK",
    "StrictNotificationRequestedV1",
    "TASK_QUEUES",
    "TaskMessage",
    "WORK_QUEUES",
    "Event",
    "Priority",
    "dead_letter_queue",
    "decode_body",
    "dump_notification_requested",
    "load_notification_requested",
    "task_message",
    "validate_notification_requested",
]
