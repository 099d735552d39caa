"""Every exception celeriac raises, in one tree.

::

    CeleriacError
    ├── ConfigurationError          bad setting, bad URL, unknown app
    │   └── UnknownSettingError     a misspelled setting (names the nearest one)
    ├── BrokerError                 a broker refused or failed an operation
    │   └── BrokerUnavailable       cannot reach the broker (names URL and fix)
    ├── BackendError                the result store failed
    ├── SerializationError          cannot encode or decode a payload
    │   └── ContentDisallowed       content type not in accept_content (e.g. pickle)
    ├── MessageError                a message that is not Celery protocol v2
    ├── MessageTooLarge             a body over task_message_max_size: not sent, or dead-lettered
    ├── NotRegistered               no task of that name in the registry
    ├── TimeoutError                AsyncResult.get() waited too long (also builtins.TimeoutError)
    ├── TaskError                   a task failed and its exception type is not importable here
    ├── TaskRevokedError            the task was revoked
    ├── DeadLettered                the message went to the dead-letter store; it will not run
    ├── MaxRetriesExceededError     self.retry() past max_retries
    ├── ChordError                  a chord's header task failed; its body will not run
    ├── TimeLimitExceeded           hard time limit; the task was stopped
    ├── SoftTimeLimitExceeded       raised inside a task at its soft time limit
    ├── WorkerLostError             the task's worker died; the task will not run again
    └── TaskControl                 control flow raised inside tasks, not errors
        ├── Retry                   self.retry(): run again later
        ├── Reject                  refuse the message (requeue or dead-letter)
        └── Ignore                  do not record a result

``TaskControl`` is an ``Exception``, as Celery's ``TaskPredicate`` is: a task
whose ``except Exception:`` wraps ``self.retry()`` catches the ``Retry``, in
Celery as here (re-raise it, or catch narrower exceptions).

Driver exceptions (sqlite3, redis, ...) are turned into these at the broker and
backend boundary; nothing above ``brokers/`` and ``backends/`` sees them.
"""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Any


class CeleriacError(Exception):
    """Base of every error celeriac raises."""


class ConfigurationError(CeleriacError):
    """A setting, URL or app reference is wrong; the message says how to fix it."""


class UnknownSettingError(ConfigurationError, KeyError):
    """A setting name that does not exist."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class BrokerError(CeleriacError):
    """The broker failed an operation."""


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached."""


class BackendError(CeleriacError):
    """The result store failed an operation."""


class SerializationError(CeleriacError):
    """A payload could not be encoded or decoded."""


class ContentDisallowed(SerializationError):
    """A content type the app does not accept (pickle unless opted in)."""


class MessageError(CeleriacError):
    """A message that is not a valid Celery protocol v2 task message."""


class MessageTooLarge(CeleriacError):
    """A task message whose encoded body is over ``task_message_max_size``.

    Raised at the caller, and nothing is sent; a worker that receives one
    (from a client with a larger limit, or none) dead-letters it and records
    REJECTED with this error. The arguments are what a stored copy is rebuilt
    from, so they stay ``(task, size, limit)``.
    """

    def __init__(self, task: str, size: int, limit: int):
        super().__init__(task, size, limit)
        self.task = task
        self.size = size
        self.limit = limit

    def __str__(self) -> str:
        return (
            f"message for task {self.task!r} is {self.size} bytes, over the limit of "
            f"{self.limit} bytes (setting task_message_max_size); pass large data by "
            "reference (a file path, URL or object-store key), or raise the limit"
        )


class NotRegistered(CeleriacError, KeyError):
    """No task of that name is registered with the app."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class TimeoutError(CeleriacError, builtins.TimeoutError):
    """Waiting for a result took longer than the timeout."""


class TaskError(CeleriacError):
    """A task failed with an exception whose class is not imported in this process.

    celeriac never imports a module named by stored data, so the remote
    exception arrives as this, carrying its type name, message and traceback.
    """

    def __init__(self, exc_type: str, exc_message: str, remote_traceback: str | None = None):
        super().__init__(f"{exc_type}: {exc_message}")
        self.exc_type = exc_type
        self.exc_message = exc_message
        self.remote_traceback = remote_traceback


class TaskRevokedError(CeleriacError):
    """The task was revoked before it ran."""


class DeadLettered(CeleriacError):
    """The task's message went to the dead-letter store (state REJECTED): it will not run.

    Stored as the result when no more specific error says why (delivered too
    many times, rejected by the task).
    """


class MaxRetriesExceededError(CeleriacError):
    """The task asked to retry more times than max_retries allows."""


class ChordError(CeleriacError):
    """A task of a chord's header failed, so the body did not run."""


class TimeLimitExceeded(CeleriacError):
    """The task ran past its hard time limit and was stopped."""


class SoftTimeLimitExceeded(CeleriacError):
    """Raised inside a task when it reaches its soft time limit."""


class WorkerLostError(CeleriacError):
    """The worker running this task died before the task finished."""


class TaskControl(CeleriacError):
    """Control flow raised inside a task; never an error to report (Celery's ``TaskPredicate``)."""


class Retry(TaskControl):
    """Raised by ``Task.retry()``: the task will run again at ``when``."""

    def __init__(
        self,
        message: str | None = None,
        exc: BaseException | None = None,
        when: float | datetime | None = None,
        *,
        new_args: tuple[Any, ...] | None = None,
        new_kwargs: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
    ):
        super().__init__(message, exc, when)
        self.message = message
        self.exc = exc
        self.when = when
        self.new_args = new_args
        self.new_kwargs = new_kwargs
        self.options = options or {}

    def humanize(self) -> str:
        if isinstance(self.when, int | float):
            return f"in {self.when}s"
        return f"at {self.when}" if self.when is not None else "now"

    def __str__(self) -> str:
        reason = f": {self.exc!r}" if self.exc is not None else ""
        return f"Retry {self.humanize()}{reason}"


class Reject(TaskControl):
    """Raised to refuse a message; ``requeue=False`` sends it to the dead-letter queue."""

    def __init__(self, reason: object = None, requeue: bool = False):
        super().__init__(reason, requeue)
        self.reason = reason
        self.requeue = requeue


class Ignore(TaskControl):
    """Raised to end a task without storing any result or state."""
