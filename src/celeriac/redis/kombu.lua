-- celeriac's broker on kombu's Redis layout: the scripts that must be atomic,
-- dispatched on ARGV[1] (redis/kombu_broker.py documents every key).
--
-- Keys (the URL's prefix before each, as kombu's global_keyprefix):
--   <queue>, <queue>\x06\x16<step>  LIST of kombu envelopes; LPUSH in, RPOP out.
--   unacked                          HASH delivery_tag -> [envelope, exchange, routing_key]
--   unacked_index                    ZSET delivery_tag -> UNIX time (delivered / last renewed)
--   celeriac:kombu-dead              STREAM of dead letters: q, r, c, t and e (envelope)
--                                     or x (bytes that were never one).
--
-- An entry of `unacked` is compared byte for byte before it is settled: one that a
-- restore took away (and someone else may hold now) is not ours to ack or renew.

local cmd = ARGV[1]

-- Pop up to ARGV[3] envelopes, lists in KEYS[4..] order, and record each in
-- unacked + unacked_index in the same call (kombu does it after BRPOP, in a
-- second round trip). ARGV[2] = now; ARGV[4..] = the queue of each list.
-- Returns {list number (1-based), envelope, unacked entry, delivery tag} per delivery.
if cmd == 'take' then
  local now, limit = ARGV[2], tonumber(ARGV[3])
  local out = {}
  for i = 4, #KEYS do
    while #out < limit do
      local raw = redis.call('RPOP', KEYS[i])
      if not raw then break end
      local ok, m = pcall(cjson.decode, raw)
      local props = ok and type(m) == 'table' and m.properties
      local tag = type(props) == 'table' and props.delivery_tag
      if type(tag) == 'string' then
        local info = props.delivery_info
        local ex, rk = '', ''
        if type(info) == 'table' then
          if type(info.exchange) == 'string' then ex = info.exchange end
          if type(info.routing_key) == 'string' then rk = info.routing_key end
        end
        local entry = '[' .. raw .. ', ' .. cjson.encode(ex) .. ', ' .. cjson.encode(rk) .. ']'
        redis.call('ZADD', KEYS[2], now, tag)
        redis.call('HSET', KEYS[1], tag, entry)
        out[#out + 1] = {i - 3, raw, entry, tag}
      else
        redis.call('XADD', KEYS[3], '*', 'q', ARGV[i], 'r', 'not a kombu envelope',
                   'c', 0, 't', now, 'x', raw)
      end
    end
  end
  return out
end

-- Settle deliveries still ours: ARGV[2] 'ack' (forget them) or 'beat' (renew
-- their index score to ARGV[3]); ARGV[4..] pairs of delivery tag, entry.
if cmd == 'settle' then
  local n = 0
  for i = 4, #ARGV, 2 do
    if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
      if ARGV[2] == 'ack' then
        redis.call('ZREM', KEYS[2], ARGV[i])
        redis.call('HDEL', KEYS[1], ARGV[i])
      else
        redis.call('ZADD', KEYS[2], 'XX', ARGV[3], ARGV[i])
      end
      n = n + 1
    end
  end
  return n
end

-- Put deliveries back in their lists, each only if its unacked entry is still
-- the one expected. ARGV[2..]: groups of tag, expected entry, new envelope,
-- 'LPUSH' or 'RPUSH', number of lists, then that many 1-based KEYS indexes.
if cmd == 'restore' then
  local n, i = 0, 2
  while i <= #ARGV do
    local tag, entry, envelope, push, lists = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3],
      tonumber(ARGV[i + 4])
    if redis.call('HGET', KEYS[1], tag) == entry then
      redis.call('ZREM', KEYS[2], tag)
      redis.call('HDEL', KEYS[1], tag)
      for j = 1, lists do
        redis.call(push, KEYS[tonumber(ARGV[i + 4 + j])], envelope)
      end
      n = n + 1
    end
    i = i + 5 + lists
  end
  return n
end

-- Move a delivery still ours to the dead letters: ARGV[2] tag, [3] entry,
-- [4] queue, [5] reason, [6] delivery count, [7] now, [8] the envelope, [9] its
-- field: 'e' (a message) or 'x' (bytes that hold none).
if cmd == 'bury' then
  if redis.call('HGET', KEYS[1], ARGV[2]) ~= ARGV[3] then return 0 end
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('HDEL', KEYS[1], ARGV[2])
  redis.call('XADD', KEYS[3], '*', 'q', ARGV[4], 'r', ARGV[5], 'c', ARGV[6], 't', ARGV[7],
             ARGV[9], ARGV[8])
  return 1
end

return redis.error_reply('unknown command ' .. tostring(cmd))
