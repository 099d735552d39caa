"""A result store's writes on Redis (``celeriac.shared_storage``), made by Lua scripts.

The result store and the broker both make ``StorageWrite``s inside a script
call: the store on its own (``MAKE_WRITES``), the broker within its publish
and fetch scripts (``WRITES_FROM`` goes first in ``broker.lua``'s
script). Both read the arguments ``write_args`` gives: per write ``'w'``, the
number of arguments, the command, the arguments. The command is a Redis
command, or ``FENCED_SET``, which the scripts carry out themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..shared_storage import StorageWrite

__all__ = ["FENCED_SET", "MAKE_WRITES", "WRITES_FROM", "write_args"]

FENCED_SET = "celeriac.fenced_set"
"""The one write that is not a Redis command: arguments key, fence key, value,
fence, expiry in ms ('' for none). Sets the key and its fence and publishes the
value, unless the key exists with a higher fence stored beside it."""

WRITES_FROM = f"""
local function fenced_set(key, fence_key, value, fence, ms)
  local stored = redis.call('GET', fence_key)
  if stored and tonumber(stored) > tonumber(fence) and redis.call('EXISTS', key) == 1 then
    return
  end
  if ms == '' then
    redis.call('SET', key, value)
    redis.call('SET', fence_key, fence)
  else
    redis.call('SET', key, value, 'PX', ms)
    redis.call('SET', fence_key, fence, 'PX', ms)
  end
  redis.call('PUBLISH', key, value)
end

-- A result store's writes from ARGV[at] on (celeriac/redis/writes.py);
-- returns the index after the last.
local function writes_from(at)
  while ARGV[at] == 'w' do
    local count = tonumber(ARGV[at + 1])
    if ARGV[at + 2] == '{FENCED_SET}' then
      fenced_set(unpack(ARGV, at + 3, at + 2 + count))
    else
      redis.call(unpack(ARGV, at + 2, at + 2 + count))
    end
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
