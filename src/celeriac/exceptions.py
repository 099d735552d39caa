"""Celery's ``celery.exceptions`` names, for code that imports them from there.

Each name is celeriac's own exception (defined in :mod:`celeriac.errors`),
under the name Celery gives the same condition, so ``from celery.exceptions
import Reject`` becomes ``from celeriac.exceptions import Reject``. The names
of Celery's module with no counterpart here are listed, with why, in
docs/migrating-from-celery.md.
"""

from __future__ import annotations

from .errors import (
    BackendError,
    BrokerError,
    CeleriacError,
    ChordError,
    ConfigurationError,
    Ignore,
    MaxRetriesExceededError,
    MessageError,
    NotRegistered,
    Reject,
    Retry,
    SoftTimeLimitExceeded,
    TaskControl,
    TaskError,
    TaskRevokedError,
    TimeLimitExceeded,
    TimeoutError,
    WorkerLostError,
)

CeleryError = CeleriacError
ImproperlyConfigured = ConfigurationError
TaskPredicate = TaskControl
InvalidTaskError = MessageError
OperationalError = BrokerError

__all__ = [
    "BackendError",
    "CeleryError",
    "ChordError",
    "Ignore",
    "ImproperlyConfigured",
    "InvalidTaskError",
    "MaxRetriesExceededError",
    "NotRegistered",
    "OperationalError",
    "Reject",
    "Retry",
    "SoftTimeLimitExceeded",
    "TaskError",
    "TaskPredicate",
    "TaskRevokedError",
    "TimeLimitExceeded",
    "TimeoutError",
    "WorkerLostError",
]
