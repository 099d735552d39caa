"""How the voice of a process-pool worker asks its sibling processes.

A process-pool worker is N independent children; to Celery's tools it is one
node, and its voice (slot 0) answers for all of them. Each child serves a
Unix socket, ``<tmp>/celeriac-node-<supervisor pid>/<slot>.sock`` (the
directory is the worker's, mode 0700, removed by the supervisor at exit; a
child removes its own socket; a directory of that name someone else owns, or
others may enter, is refused: its sockets could answer for the worker).
One request per connection: a JSON line ``{"op", "args"}``, answered by a
JSON line ``{"ok": value}`` or ``{"error": message}``. :meth:`NodeLink.gather`
runs an operation here and in every live sibling at once; a sibling that does
not answer within ``ANSWER_TIMEOUT`` (dead, being replaced, or not serving
yet) is left out.
A worker of one process has no siblings and serves nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import orjson

from .node import Node

__all__ = ["ANSWER_TIMEOUT", "LocalHandler", "NodeLink", "runtime_dir"]

logger = logging.getLogger("celeriac.worker")

ANSWER_TIMEOUT = 0.5
"""Seconds the voice waits for a sibling before leaving it out."""

LocalHandler = Callable[[str, Mapping[str, Any]], Awaitable[Any]]
"""Runs one operation in this process: ``(op, args) -> answer`` (JSON-able)."""


_MISSING: Any = object()
"""A sibling that gave no answer."""


def runtime_dir(supervisor_pid: int) -> Path:
    """The directory of the sockets of the worker whose supervisor is ``supervisor_pid``."""
    return Path(tempfile.gettempdir()) / f"celeriac-node-{supervisor_pid}"


class NodeLink:
    """This process's end of the link: serves its siblings, asks them."""

    def __init__(self, node: Node, slot: int, handle: LocalHandler):
        self.node = node
        self.slot = slot
        self.handle = handle
        self._server: asyncio.Server | None = None
        self._path: Path | None = None

    @property
    def directory(self) -> Path | None:
        return runtime_dir(self.node.supervisor) if self.node.supervisor else None

    async def start(self) -> None:
        """Serve this process's slot (only in a worker with a supervisor)."""
        directory = self.directory
        if directory is None:
            return
        directory.mkdir(mode=0o700, exist_ok=True)
        owned = directory.lstat()
        if owned.st_uid != os.getuid() or owned.st_mode & 0o077 or directory.is_symlink():
            logger.error("not serving the node link: %s is not this user's alone", directory)
            return
        path = directory / f"{self.slot}.sock"
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # the process this one replaces
        self._server = await asyncio.start_unix_server(self._serve, path=str(path))
        self._path = path

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()

    async def gather(self, op: str, *, timeout: float = ANSWER_TIMEOUT, **args: Any) -> list[Any]:
        """``op`` run here and in every sibling that answers within ``timeout``: the
        answers, this process's first."""
        node = self.node
        siblings = [
            slot
            for slot in range(node.capacity)
            if node.supervisor and slot != self.slot and node.pid(slot)
        ]
        asked = await asyncio.gather(*(self._ask(slot, op, args, timeout) for slot in siblings))
        return [await self.handle(op, args), *(a for a in asked if a is not _MISSING)]

    async def _ask(self, slot: int, op: str, args: Mapping[str, Any], timeout: float) -> Any:
        assert self.directory is not None
        path = self.directory / f"{slot}.sock"
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_unix_connection(str(path))
                try:
                    writer.write(orjson.dumps({"op": op, "args": args}) + b"\n")
                    answer = orjson.loads(await reader.readline())
                finally:
                    writer.close()
        except (OSError, TimeoutError, orjson.JSONDecodeError) as exc:
            logger.debug("process in slot %d did not answer %s: %s", slot, op, exc)
            return _MISSING
        if "error" in answer:
            logger.warning("process in slot %d failed %s: %s", slot, op, answer["error"])
            return _MISSING
        return answer["ok"]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = orjson.loads(await reader.readline())
            try:
                answer = {"ok": await self.handle(str(request["op"]), request.get("args") or {})}
            except Exception as exc:
                logger.exception("node link operation %r failed", request.get("op"))
                answer = {"error": repr(exc)}
            writer.write(orjson.dumps(answer, default=repr) + b"\n")
            await writer.drain()
        except (OSError, orjson.JSONDecodeError, KeyError):
            pass  # the asker gave up or sent nonsense: it counts us as missing
        finally:
            writer.close()
