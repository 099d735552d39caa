"""A result store's writes on Redis (``celeriac.shared_storage``), made by Lua scripts.

The result store and the broker both make ``StorageWrite``s inside a script
call: the store on its own (``MAKE_WRITES``), the broker within its publish
and fetch scripts (``WRITES_FROM`` goes first in ``broker.lua``'s
script). Both read the arguments ``write_args`` gives: per write ``'w'``, the
number of arguments, the command, the arguments. The command is a Redis
command, or one of the writes the scripts carry out themselves: ``FENCED_SET``
(a result store's) and ``FENCED_RUNS`` (beat's, :mod:`celeriac.redis.beat`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..shared_storage import StorageWrite

__all__ = ["FENCED_RUNS", "FENCED_SET", "MAKE_WRITES", "WRITES_FROM", "write_args"]

FENCED_SET = "celeriac.fenced_set"
"""A result store's write that is not a Redis command: arguments key, fence key, value,
fence, expiry in ms ('' for none). Sets the key and its fence and publishes the
value, unless the key exists with a higher fence stored beside it."""

FENCED_RUNS = "celeriac.fenced_runs"
"""Beat's record of ticks sent: arguments the lease key (HASH, field ``token``),
the runs key (HASH entry -> tick), the recording lease's token, then entry and
tick (a float's ``repr``) pairs. Sets each entry's tick, if later than the
stored one, unless the lease's token is no longer the one given: then nothing."""

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

-- Beat's runs, if `token` is still the lease's; each tick only moves later.
-- Returns 1, or 0: fenced out, nothing stored.
local function fenced_runs(lease_key, runs_key, token, ...)
  if redis.call('HGET', lease_key, 'token') ~= token then return 0 end
  local runs = {{...}}
  for i = 1, #runs, 2 do
    local stored = redis.call('HGET', runs_key, runs[i])
    if not stored or tonumber(runs[i + 1]) > tonumber(stored) then
      redis.call('HSET', runs_key, runs[i], runs[i + 1])
    end
  end
  return 1
end

-- The writes from ARGV[at] on (celeriac/redis/writes.py);
-- returns the index after the last.
local function writes_from(at)
  while ARGV[at] == 'w' do
    local count = tonumber(ARGV[at + 1])
    if ARGV[at + 2] == '{FENCED_SET}' then
      fenced_set(unpack(ARGV, at + 3, at + 2 + count))
    elseif ARGV[at + 2] == '{FENCED_RUNS}' then
      fenced_runs(unpack(ARGV, at + 3, at + 2 + count))
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
