"""Beat's store on Redis: the leader lease and last runs, the same keys on both layouts.

Keys (``G`` = the URL's ``prefix`` or the ``global_keyprefix`` transport
option, as on the layout's other keys; kombu has no beat keys, so a fleet
that moves from kombu's layout to celeriac's keeps its beat state):

``G celeriac:beat:lease``, HASH: ``holder`` (the last holder's name),
    ``token`` (one more for each new holder: the fence of the runs),
    ``expires`` (UNIX ms by the server's clock: the last claim plus its ttl,
    or the time of a release). Lifetime: the database's (a release or a lapse
    only moves ``expires``, so the token never goes back).
``G celeriac:beat:runs``, HASH: entry name -> last tick sent (UNIX seconds,
    a float's ``repr``, so it reads back as the very float stored). Lifetime:
    the database's; an entry dropped from the schedule keeps its field.

Every operation but ``last_runs`` (one ``HGETALL``) is one call of ``SCRIPT``,
atomic: so of any number of beats claiming at once exactly one wins, and the
lapse rule reads one clock, the server's ``TIME``, whichever host asks.
``record`` and ``record_writes`` are the same Lua function (``FENCED_RUNS`` in
:mod:`celeriac.redis.writes`): on celeriac's layout the broker's publish script
makes ``record_writes`` with the messages; kombu's layout publishes with
``MULTI``, so there beat records with a call of its own (``shares_publish`` False).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

from ..brokers.beat_store import BeatStore, Lease
from ..errors import ConfigurationError
from ..shared_storage import StorageWrite
from .operations import Errors
from .writes import FENCED_RUNS, WRITES_FROM

try:
    import redis.asyncio as aioredis
except ImportError as exc:  # the driver is an optional extra
    raise ConfigurationError(
        "the Redis broker needs the redis driver: pip install 'celeriac[redis]'"
    ) from exc

__all__ = ["LEASE_KEY", "RUNS_KEY", "RedisBeatStore"]

LEASE_KEY = "celeriac:beat:lease"
RUNS_KEY = "celeriac:beat:runs"

SCRIPT = (
    WRITES_FROM
    + """
-- KEYS: the lease, the runs. ARGV[1]: what to do; the rest as each branch says.
local cmd, lease = ARGV[1], KEYS[1]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- holder (false: never held), token (0: never), expires (UNIX ms; 0: never)
local function read_lease()
  local f = redis.call('HMGET', lease, 'holder', 'token', 'expires')
  return f[1], tonumber(f[2]) or 0, tonumber(f[3]) or 0
end

if cmd == 'claim' then -- holder, ttl ms -> nil (held by another), or {token, idle since ms or -1}
  local holder, ttl = ARGV[2], tonumber(ARGV[3])
  local now = now_ms()
  local current, token, expires = read_lease()
  if expires > now then
    if current ~= holder then return false end
    redis.call('HSET', lease, 'expires', now + ttl)
    return {token, -1}
  end
  redis.call('HSET', lease, 'holder', holder, 'token', token + 1, 'expires', now + ttl)
  return {token + 1, current and expires or -1}
elseif cmd == 'release' then -- holder, token
  local current, token, expires = read_lease()
  local now = now_ms()
  if current == ARGV[2] and token == tonumber(ARGV[3]) and expires > now then
    redis.call('HSET', lease, 'expires', now)
  end
  return 1
elseif cmd == 'holder' then -- -> nil (nobody), or {holder, expires ms}
  local current, _, expires = read_lease()
  if expires <= now_ms() then return false end
  return {current, expires}
elseif cmd == 'record' then -- token, then entry and tick pairs -> 1, or 0: fenced out
  return fenced_runs(lease, KEYS[2], unpack(ARGV, 2))
end
error('unknown beat command ' .. tostring(cmd))
"""
)


def _runs_args(lease: Lease, runs: Mapping[str, float]) -> list[Any]:
    """The token, then each entry and its tick as ``repr``: the exact float, read back."""
    args: list[Any] = [lease.token]
    for name, tick in runs.items():
        args += [name, repr(float(tick))]
    return args


class RedisBeatStore(BeatStore):
    """The beat store of one Redis broker, on its connection pool; see the module docstring."""

    def __init__(
        self, client: aioredis.Redis, prefix: str, errors: Errors, *, shares_publish: bool
    ):
        """``prefix``: the layout's ``G``; ``shares_publish``: whether the broker's publish
        makes ``record_writes`` (celeriac's layout)."""
        self._keys = [prefix + LEASE_KEY, prefix + RUNS_KEY]
        self._client = client
        self._script = client.register_script(SCRIPT)
        self._errors = errors
        self.shares_publish = shares_publish

    async def claim(self, holder: str, ttl: float) -> Lease | None:
        start = time.monotonic()
        # Rounded up, and a millisecond more for TIME's truncation to ms: the stored
        # expiry never comes before the ``until`` the holder goes by.
        reply = await self._run("claim", holder, math.ceil(ttl * 1000) + 1)
        if reply is None:
            return None
        token, idle_ms = reply
        return Lease(holder, int(token), start + ttl, None if idle_ms < 0 else idle_ms / 1000)

    async def last_runs(self) -> dict[str, float]:
        with self._errors():
            stored = cast(dict[bytes, bytes], await self._client.hgetall(self._keys[1]))
        return {name.decode(): float(tick) for name, tick in stored.items()}

    async def record(self, lease: Lease, runs: Mapping[str, float]) -> bool:
        return bool(await self._run("record", *_runs_args(lease, runs)))

    def record_writes(self, lease: Lease, runs: Mapping[str, float]) -> Sequence[StorageWrite]:
        if not self.shares_publish:
            return super().record_writes(lease, runs)
        if not runs:
            return []
        return [StorageWrite(FENCED_RUNS, [*self._keys, *_runs_args(lease, runs)])]

    async def release(self, lease: Lease) -> None:
        await self._run("release", lease.holder, lease.token)

    async def holder(self) -> tuple[str, float] | None:
        reply = await self._run("holder")
        if reply is None:
            return None
        holder, expires_ms = reply
        return holder.decode(), expires_ms / 1000

    async def _run(self, *args: Any) -> Any:
        with self._errors():
            return await self._script(keys=self._keys, args=list(args))
