"""A result store's writes on Redis (``celeriac.shared_storage``), made by Lua scripts.

The result store and the broker both make ``StorageWrite``s inside a script
call: the store on its own (``MAKE_WRITES``), the broker within its publish
and fetch scripts (``WRITES_FROM`` goes first in ``redis_broker.lua``'s
script). Both read the arguments ``write_args`` gives: per write ``'w'``, the
number of arguments, the command, the arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .shared_storage import StorageWrite

__all__ = ["MAKE_WRITES", "WRITES_FROM", "write_args"]

WRITES_FROM = """
-- A result store's writes from ARGV[at] on (celeriac/redis_writes.py);
-- returns the index after the last.
local function writes_from(at)
  while ARGV[at] == 'w' do
    local count = tonumber(ARGV[at + 1])
    redis.call(unpack(ARGV, at + 2, at + 2 + count))
    at = at + 3 + count
  end
  return at
end
"""

MAKE_WRITES = WRITES_FROM + "writes_from(1)\nreturn 1\n"
"""Makes every write of ARGV, atomically, in one call."""


def write_args(writes: Sequence[StorageWrite]) -> list[Any]:
    """``writes`` as the scripts read them."""
    args: list[Any] = []
    for write in writes:
        args += ["w", len(write.args), write.statement, *write.args]
    return args
