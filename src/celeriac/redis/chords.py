"""Chords on the Redis result store: Celery 5.7's keys and scripts, so either side completes them.

Keys (``P`` = the store's prefix, ``G`` = ``celery-taskset-meta-<group id>``):

``P G.s``, STRING: the number of header results that complete the chord. Set
    by the client before it sends the header (``SET ... EX``, with ``P G.c``
    deleted first: re-sending a frozen chord is a new run). Deleted when the
    chord is over.
``P G.j``, ZSET: each header task's ``[1, task id, state, result]`` (the
    result store's serializer; a failure's result is the encoded exception),
    scored by its ``group_index``, so reading it back gives group order.
``P G.d``, SET of ``<task id>:<group index>``: the parts recorded, so a
    duplicate delivery is never counted twice.
``P G.t``, STRING: a size adjustment Celery's Task.add_to_chord makes
    (``INCR``); counted, never written here.
``P G.c``, STRING: who may send the body: a random token set with the part that
    completed the chord (``SET NX EX``, a lease of ``CLAIM_SECONDS``), renewed
    for ``SEND_SECONDS`` right before the body is sent, and replaced by
    ``done`` (for ``DONE_SECONDS``) when it was, with ``.s/.j/.d/.t`` deleted.
    While it says ``done``, a late duplicate records nothing.

Lifetime: ``.s/.j/.d/.t`` expire ``result_expires`` after the last part (the
saved group ``G``, if any, as long).

The scripts are Celery's (``celery/backends/redis.py``: CHORD_PART_RETURN_LUA,
CHORD_CLAIM_EXTEND_LUA, CHORD_CLEANUP_LUA) so a fleet of both
counts, claims and cleans up the same way. Celery's unordered list variant
(``result_chord_ordered=False``) is not spoken: Celery's default is the set.
"""

from __future__ import annotations

from ..backends.base import GROUP_KEY_PREFIX

__all__ = [
    "CLAIM_SECONDS",
    "CLEANUP",
    "DONE_SECONDS",
    "EXTEND",
    "PART_RETURN",
    "SEND_SECONDS",
    "chord_keys",
]

CLAIM_SECONDS = 6
"""The lease of the part that completed the chord, until it sends the body
(Celery's: twice ``result_chord_join_timeout``, 3 s by default). If that
worker dies first, a redelivered header task takes the chord over after it."""
SEND_SECONDS = 21
"""The lease renewed right before the body is sent (Celery's estimate for its
default publish retries and connection timeout)."""
DONE_SECONDS = 300
"""How long ``.c`` says ``done`` after the body was sent (Celery's)."""

PART_RETURN = """
local jkey, tkey, skey, dkey, gkey, ckey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local tid, value, ordered, score = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local expires, group_expires = tonumber(ARGV[5]), tonumber(ARGV[6])
local claim_expires = tonumber(ARGV[7])
local claim_token = ARGV[8]

local done_marker = redis.call('GET', ckey)
if done_marker == 'done' then
    return {-1, 0, 0, 0}
end

local member = tid .. ':' .. score
if redis.call('SISMEMBER', dkey, member) == 0 then
    if ordered == '1' then
        redis.call('ZADD', jkey, score, value)
    else
        redis.call('RPUSH', jkey, value)
    end
    redis.call('SADD', dkey, member)
end
local readycount
if ordered == '1' then
    readycount = redis.call('ZCOUNT', jkey, '-inf', '+inf')
else
    readycount = redis.call('LLEN', jkey)
end
if expires > 0 then
    for _, key in ipairs({jkey, tkey, skey, dkey}) do
        redis.call('EXPIRE', key, expires)
    end
    if group_expires > 0 then
        redis.call('EXPIRE', gkey, group_expires)
    end
end

local totaldiff = redis.call('GET', tkey)
local size = redis.call('GET', skey)
local claimed = 0
if size and readycount == tonumber(size) + tonumber(totaldiff or 0) then
    if redis.call('SET', ckey, claim_token, 'NX', 'EX', claim_expires) then
        claimed = 1
    end
end

return {readycount, totaldiff, size, claimed}
"""
"""Record a part unless recorded (``.d``); claim ``.c`` if it completes the chord.
Returns ``{ready, .t, .s, claimed}``; ``ready`` is -1 when the chord is over."""

EXTEND = """
local ckey, skey = KEYS[1], KEYS[2]
local token = ARGV[1]
local expires = tonumber(ARGV[2])
if redis.call('GET', ckey) == token then
    return redis.call('EXPIRE', ckey, expires)
end
if not redis.call('GET', ckey) and redis.call('EXISTS', skey) == 1 then
    return redis.call('SET', ckey, token, 'EX', expires, 'NX') and 1 or 0
end
return 0
"""
"""Renew the caller's lease on ``.c``, or take it again if it lapsed unclaimed."""

CLEANUP = """
local ckey = KEYS[1]
local jkey = KEYS[2]
local tkey = KEYS[3]
local skey = KEYS[4]
local dkey = KEYS[5]
local token = ARGV[1]
local done_expires = tonumber(ARGV[2])

if redis.call('GET', ckey) == token then
    redis.call('DEL', jkey, tkey, skey, dkey)
    if done_expires and done_expires > 0 then
        redis.call('SET', ckey, 'done', 'EX', done_expires)
    end
    return 1
end
return 0
"""
"""If the caller still holds ``.c``: delete the chord's keys and mark it ``done``."""


def chord_keys(prefix: str, group_id: str) -> dict[str, str]:
    """The chord's keys by suffix (``s j t d c``, and ``""`` for the saved group)."""
    group = prefix + GROUP_KEY_PREFIX + group_id
    return {suffix: group + (f".{suffix}" if suffix else "") for suffix in ("", *"sjtdc")}
