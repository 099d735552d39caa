-- celeriac's Redis broker: every script it runs, dispatched on ARGV[1]
-- (one script, one SHA, loaded once; as Dramatiq's dispatch.lua).
--
-- Keys (P = the URL's prefix .. "celeriac:"; redis/broker.py documents lifetimes):
--   P .. "queue:<queue>:<priority>"  STREAM, one per priority 0-9: the queue's ready
--                                     and delivered-but-unacked messages; consumer
--                                     group "celeriac". Entry fields: h (orjson of
--                                     [headers, properties, content_type,
--                                     content_encoding]), b (body), n (deliveries
--                                     before this entry existed; absent = 0).
--   P .. "delayed:<queue>"           ZSET of msgpack [priority, n, h, b, nonce],
--                                     score = not_before (UNIX ms).
--   P .. "consumers:<queue>"         ZSET consumer -> lease expiry (UNIX ms, the
--                                     server's clock), renewed by fetch and heartbeat.
--   P .. "dead"                      STREAM of dead letters: q (queue), p (priority),
--                                     r (reason), c (delivery count), t (UNIX time),
--                                     and h, b for a message or x for raw bytes.
--
-- Every time below is the server's clock (TIME), so leases need no clock sync
-- between workers. Only fetch moves delayed messages and claims lapsed leases.
-- `writes_from` (a result store's writes) comes from celeriac/redis/writes.py,
-- put before this file's text.

local cmd = ARGV[1]
local KEYS_PER_QUEUE = 12 -- consumers, delayed, then the streams of priority 0..9
local MOVE_BATCH = 1000   -- delayed messages moved per queue per fetch
local DEAD_SCAN = 16      -- lapsed consumers looked at per queue per fetch

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function fields_of(list)
  local f = {}
  for i = 1, #list, 2 do f[list[i]] = list[i + 1] end
  return f
end

local function failed(reply)
  return type(reply) == 'table' and reply.err ~= nil
end

-- The id of the last entry the group was given (nil: no group).
local function last_delivered(stream, group)
  local groups = redis.pcall('XINFO', 'GROUPS', stream)
  if failed(groups) then return nil end
  for _, g in ipairs(groups) do
    local f = fields_of(g)
    if f['name'] == group then return f['last-delivered-id'] end
  end
  return nil
end

local function owner_of(stream, group, id)
  local entry = redis.pcall('XPENDING', stream, group, id, id, 1)
  if failed(entry) or #entry == 0 then return nil end
  return entry[1][2]
end

local function pending_of(stream, group, consumer, count)
  local pending = redis.pcall('XPENDING', stream, group, '-', '+', count, consumer)
  if failed(pending) then return {} end
  return pending
end

-- Take over up to `left` entries a lapsed consumer held; the PEL counts deliveries.
local function claim(stream, group, me, consumer, left, q, p, out)
  local pending = pending_of(stream, group, consumer, left)
  if #pending == 0 then return left end
  local ids, counts = {}, {}
  for i, e in ipairs(pending) do
    ids[i] = e[1]
    counts[e[1]] = tonumber(e[4])
  end
  for _, e in ipairs(redis.call('XCLAIM', stream, group, me, 0, unpack(ids))) do
    if e and e[2] then
      local f = fields_of(e[2])
      out[#out + 1] = {q, p, e[1], (tonumber(f.n) or 0) + counts[e[1]] + 1, f.h or '', f.b or ''}
      left = left - 1
    end
  end
  return left
end

local function read_new(stream, group, me, left, q, p, out)
  local reply = redis.pcall('XREADGROUP', 'GROUP', group, me, 'COUNT', left, 'STREAMS', stream, '>')
  if failed(reply) then
    if not string.find(reply.err, 'NOGROUP') then error(reply.err) end
    redis.call('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
    reply = redis.call('XREADGROUP', 'GROUP', group, me, 'COUNT', left, 'STREAMS', stream, '>')
  end
  if not reply then return left end
  for _, e in ipairs(reply[1][2]) do
    local f = fields_of(e[2])
    out[#out + 1] = {q, p, e[1], (tonumber(f.n) or 0) + 1, f.h or '', f.b or ''}
    left = left - 1
  end
  return left
end

local function move_due(delayed, streams_base, now)
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, MOVE_BATCH)
  if #due == 0 then return end
  for _, member in ipairs(due) do
    local m = cmsgpack.unpack(member)
    redis.call('XADD', KEYS[streams_base + m[1]], '*', 'h', m[3], 'b', m[4], 'n', m[2])
  end
  redis.call('ZREM', delayed, unpack(due))
end

-- Forget a lapsed consumer once nothing of its is pending in this queue.
local function bury_consumer(base, group, consumer)
  for p = 0, 9 do
    if #pending_of(KEYS[base + 3 + p], group, consumer, 1) > 0 then return end
  end
  redis.call('ZREM', KEYS[base + 1], consumer)
  for p = 0, 9 do redis.pcall('XGROUP', 'DELCONSUMER', KEYS[base + 3 + p], group, consumer) end
end

-- Settle acks: ARGV from `at` on is a count of groups, then per group the KEYS
-- index of a stream, a count of ids, the ids. Only entries `me` still holds:
-- once another consumer took one over (our lease lapsed), it is theirs to ack.
local function ack_from(at, group, me)
  local groups = tonumber(ARGV[at] or 0)
  at = at + 1
  for _ = 1, groups do
    local stream, n = KEYS[tonumber(ARGV[at])], tonumber(ARGV[at + 1])
    local ids = {}
    for i = 1, n do
      local id = ARGV[at + 1 + i]
      if owner_of(stream, group, id) == me then ids[#ids + 1] = id end
    end
    if #ids > 0 then
      redis.call('XACK', stream, group, unpack(ids))
      redis.call('XDEL', stream, unpack(ids))
    end
    at = at + 2 + n
  end
  return at
end

-- KEYS: as fetch. ARGV: 'ack', group, me, then a result store's writes (see
-- writes_from) and acks (see ack_from), made in that order, atomically.
local function ack()
  ack_from(writes_from(4), ARGV[2], ARGV[3])
  return 1
end

-- KEYS: per queue, consumers, delayed, streams 0..9.
-- ARGV: 'fetch', group, me, limit, lease_ms, rotation, then a result store's
-- writes (see writes_from) and acks (see ack_from) to make first.
-- Returns {deliveries, due_in_ms, wake_ids}: deliveries as {queue index (0-based),
-- priority, id, delivery count, h, b}; when there are none, how long until a delayed
-- message or a lease comes due (-1: nothing will) and each stream's last
-- delivered id (for an XREAD that wakes on the next new entry).
local function fetch()
  local group, me = ARGV[2], ARGV[3]
  local left, lease, rotation = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
  local nq = #KEYS / KEYS_PER_QUEUE
  ack_from(writes_from(7), group, me)
  local now = now_ms()
  local lapsed = {}
  for q = 0, nq - 1 do
    local base = q * KEYS_PER_QUEUE
    redis.call('ZADD', KEYS[base + 1], now + lease, me)
    move_due(KEYS[base + 2], base + 3, now)
    lapsed[q] = redis.call('ZRANGEBYSCORE', KEYS[base + 1], '-inf', '(' .. now, 'LIMIT', 0, DEAD_SCAN)
  end
  local out = {}
  for p = 9, 0, -1 do
    for i = 0, nq - 1 do
      local q = (i + rotation) % nq
      local stream = KEYS[q * KEYS_PER_QUEUE + 3 + p]
      for _, consumer in ipairs(lapsed[q]) do
        if left > 0 then left = claim(stream, group, me, consumer, left, q, p, out) end
      end
      if left > 0 then left = read_new(stream, group, me, left, q, p, out) end
    end
  end
  for q = 0, nq - 1 do
    for _, consumer in ipairs(lapsed[q]) do bury_consumer(q * KEYS_PER_QUEUE, group, consumer) end
  end
  if #out > 0 then return {out, -1, {}} end
  local due, ids = -1, {}
  for q = 0, nq - 1 do
    local base = q * KEYS_PER_QUEUE
    for k = 1, 2 do
      local first = redis.call('ZRANGE', KEYS[base + k], 0, 0, 'WITHSCORES')
      if #first > 0 then
        local wait = math.max(tonumber(first[2]) - now, 0)
        if due < 0 or wait < due then due = wait end
      end
    end
    for p = 0, 9 do ids[#ids + 1] = last_delivered(KEYS[base + 3 + p], group) or '0-0' end
  end
  return {out, due, ids}
end

-- KEYS: the streams and delayed sets written to. ARGV: 'publish', then per
-- message either 'x', KEYS index, h, b (append to a stream) or 'z', KEYS index,
-- not_before_ms, member (add to a delayed set). Before the messages, a result
-- store's writes (celeriac.shared_storage), each 'w', argument count, command,
-- arguments; one that fails fails the call before any message is stored.
-- Returns how many messages it stored.
local function publish()
  local i, n = writes_from(2), 0
  while i <= #ARGV do
    local key = KEYS[tonumber(ARGV[i + 1])]
    if ARGV[i] == 'x' then
      redis.call('XADD', key, '*', 'h', ARGV[i + 2], 'b', ARGV[i + 3])
    else
      redis.call('ZADD', key, ARGV[i + 2], ARGV[i + 3])
    end
    i, n = i + 4, n + 1
  end
  return n
end

-- KEYS: per queue, consumers. ARGV: 'beat', me, lease_ms.
local function beat()
  local expiry = now_ms() + tonumber(ARGV[3])
  for _, key in ipairs(KEYS) do redis.call('ZADD', key, expiry, ARGV[2]) end
  return #KEYS
end

-- KEYS: per delivery, its stream and its queue's delayed set.
-- ARGV: 'release', group, me, then per delivery: id, priority, n, h, b, not_before_ms.
-- Hands back what `me` still owns: now (a new entry at the stream's end) or
-- later (into the delayed set). Returns how many it handed back.
local function release()
  local group, me, now, done = ARGV[2], ARGV[3], now_ms(), 0
  for i = 1, #KEYS / 2 do
    local stream, delayed, a = KEYS[2 * i - 1], KEYS[2 * i], 3 + (i - 1) * 6
    local id, p, n, h, b = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5]
    local not_before = tonumber(ARGV[a + 6])
    if owner_of(stream, group, id) == me then
      redis.call('XACK', stream, group, id)
      redis.call('XDEL', stream, id)
      if not_before > now then
        redis.call('ZADD', delayed, not_before, cmsgpack.pack({tonumber(p), tonumber(n), h, b, id}))
      else
        redis.call('XADD', stream, '*', 'h', h, 'b', b, 'n', n)
      end
      done = done + 1
    end
  end
  return done
end

-- KEYS: stream, dead. ARGV: 'bury', group, me, id, queue, priority, reason, count,
-- dead_at, h, b. Moves an owned delivery to the dead letters; 1 if it did.
local function bury()
  local stream, group, me, id = KEYS[1], ARGV[2], ARGV[3], ARGV[4]
  if owner_of(stream, group, id) ~= me then return 0 end
  redis.call('XACK', stream, group, id)
  redis.call('XDEL', stream, id)
  redis.call('XADD', KEYS[2], '*', 'q', ARGV[5], 'p', ARGV[6], 'r', ARGV[7], 'c', ARGV[8],
    't', ARGV[9], 'h', ARGV[10], 'b', ARGV[11])
  return 1
end

-- KEYS: as fetch. ARGV: 'leave', group, me. A closing consumer leaves at once
-- when nothing of its is pending; otherwise its lease ends now, so the next
-- fetch of another consumer takes the rest over.
local function leave()
  local group, me = ARGV[2], ARGV[3]
  for base = 0, #KEYS - 1, KEYS_PER_QUEUE do
    redis.call('ZADD', KEYS[base + 1], 0, me)
    bury_consumer(base, group, me)
  end
  return 1
end

-- KEYS: delayed, streams 0..9. ARGV: 'stats', group. Returns {ready, delayed, reserved}.
local function stats()
  local ready, reserved = 0, 0
  for p = 0, 9 do
    local stream = KEYS[2 + p]
    local length = redis.call('XLEN', stream)
    local summary = redis.pcall('XPENDING', stream, ARGV[2])
    local pending = failed(summary) and 0 or tonumber(summary[1])
    ready = ready + length - pending
    reserved = reserved + pending
  end
  return {ready, redis.call('ZCARD', KEYS[1]), reserved}
end

-- KEYS: delayed, streams 0..9. ARGV: 'purge', group. Deletes what is ready or
-- delayed (never a delivered entry); returns how many.
local function purge()
  local count = redis.call('ZCARD', KEYS[1])
  redis.call('DEL', KEYS[1])
  for p = 0, 9 do
    local stream = KEYS[2 + p]
    local last = last_delivered(stream, ARGV[2])
    if last == nil then
      count = count + redis.call('XLEN', stream)
      redis.call('DEL', stream)
    else
      local start = '(' .. last
      while true do
        local batch = redis.call('XRANGE', stream, start, '+', 'COUNT', 500)
        if #batch == 0 then break end
        local ids = {}
        for i, e in ipairs(batch) do ids[i] = e[1] end
        count = count + redis.call('XDEL', stream, unpack(ids))
        start = '(' .. ids[#ids]
      end
    end
  end
  return count
end

-- KEYS: dead, then one stream per id. ARGV: 'requeue', then the dead letters' ids.
-- Puts each dead letter that is a message back, with a fresh delivery count.
local function requeue()
  local moved = 0
  for i = 2, #ARGV do
    local entry = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])
    if #entry > 0 then
      local f = fields_of(entry[1][2])
      if f.h then
        redis.call('XADD', KEYS[i], '*', 'h', f.h, 'b', f.b or '')
        redis.call('XDEL', KEYS[1], ARGV[i])
        moved = moved + 1
      end
    end
  end
  return moved
end

local commands = {
  fetch = fetch, ack = ack, publish = publish, beat = beat, release = release, bury = bury,
  leave = leave,
  stats = stats, purge = purge, requeue = requeue,
}
return commands[cmd]()
