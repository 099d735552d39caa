"""Remote control: Celery's pidbox client (``app.control``) and its wire rules.

::

    mailbox.py  the command, reply and addressing rules of ``kombu.pidbox``
    client.py   Control (``app.control``) and Inspect (``app.control.inspect()``)

The worker's side (the handlers) is ``celeriac.worker.remote_control``.
"""

from __future__ import annotations

from .client import Control, Inspect, flatten_reply

__all__ = ["Control", "Inspect", "flatten_reply"]
