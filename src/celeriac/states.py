"""Task states, with Celery's names and values.

``UNKNOWN`` is celeriac's own: ``AsyncResult.state`` says PENDING for an id
the result store has never seen (as Celery does), while
``AsyncResult.known()`` tells an unknown id from one that was sent and waits.
"""

from __future__ import annotations

from typing import Final

PENDING: Final = "PENDING"
RECEIVED: Final = "RECEIVED"
STARTED: Final = "STARTED"
SUCCESS: Final = "SUCCESS"
FAILURE: Final = "FAILURE"
REVOKED: Final = "REVOKED"
REJECTED: Final = "REJECTED"
RETRY: Final = "RETRY"
IGNORED: Final = "IGNORED"

READY_STATES: Final = frozenset({SUCCESS, FAILURE, REVOKED, REJECTED, IGNORED})
UNREADY_STATES: Final = frozenset({PENDING, RECEIVED, STARTED, RETRY})
EXCEPTION_STATES: Final = frozenset({RETRY, FAILURE, REVOKED, REJECTED})
PROPAGATE_STATES: Final = frozenset({FAILURE, REVOKED, REJECTED})
ALL_STATES: Final = READY_STATES | UNREADY_STATES
