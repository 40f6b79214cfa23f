"""The Lua scripts of the Redis transport. Each runs atomically in Redis, in one round trip.

Keys passed per queue (``KEYS``), in this order: the delayed sorted set, the sweep lock, then
the ten priority streams from level 9 down to level 0 (:data:`KEYS_PER_QUEUE` in all).
Entry fields are described in :mod:`._codec`.
"""

from __future__ import annotations

__all__ = [
    "FETCH",
    "KEYS_PER_QUEUE",
    "LEVELS",
    "OLDEST_MESSAGE_AGE",
    "PUBLISH_DELAYED",
    "PUBLISH_LEVEL",
    "PURGE",
    "QUEUE_LENGTH",
    "RETURN_PENDING",
    "SETTLE",
]

#: Priority levels, one stream each; served from the highest down.
LEVELS = 10
KEYS_PER_QUEUE = 2 + LEVELS

# Helpers shared by the scripts (prepended to each).
_COMMON = """
local function parse(f)
  local h, b, n, x, tick = nil, nil, 0, '', false
  for i = 1, #f, 2 do
    local k = f[i]
    if k == 'h' then h = f[i + 1]
    elseif k == 'b' then b = f[i + 1]
    elseif k == 'n' then n = tonumber(f[i + 1]) or 0
    elseif k == 'x' then x = f[i + 1]
    elseif k == 't' then tick = true end
  end
  return h, b, n, x, tick
end

-- the pending entry {id, consumer, idle, deliveries} of `id` when `consumer` holds it, else nil
local function held(key, group, consumer, id)
  local p = redis.pcall('XPENDING', key, group, id, id, 1, consumer)
  if type(p) ~= 'table' or p.err or p[1] == nil then return nil end
  return p[1]
end
"""

#: Fetch up to ``limit`` messages from several queues, in one atomic step:
#: 1. move due delayed messages into their priority streams;
#: 2. every ``sweep_ms`` (one consumer per queue per period, via the sweep lock) claim entries
#:    idle longer than the visibility timeout (their consumer died) with XAUTOCLAIM, and
#:    delete consumers that hold nothing and were idle that long (killed workers; deleting
#:    a live one loses nothing: its next XREADGROUP creates it again);
#: 3. read new entries with XREADGROUP from the highest priority level down, creating the
#:    consumer group on first sight of a stream.
#: ARGV: group, consumer, limit, now (unix ms), visibility (ms), sweep period (ms, 0 = no
#: sweep), number of queues. Returns ``{next_due_ms or -1, level mask per queue...,
#: then 7 items per delivery: queue number, level, id, h, b, x, delivery count}``.
FETCH = (
    _COMMON
    + """
local group, consumer = ARGV[1], ARGV[2]
local remaining = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local visibility = ARGV[5]
local sweep = tonumber(ARGV[6])
local queues = tonumber(ARGV[7])
local next_due = -1
local head, deliveries = {}, {}

local function emit(q, level, key, id, f, count_from)
  local h, b, n, x, tick = parse(f)
  if tick or h == nil then
    redis.call('XACK', key, group, id)
    redis.call('XDEL', key, id)
    return
  end
  deliveries[#deliveries + 1] = q
  deliveries[#deliveries + 1] = level
  deliveries[#deliveries + 1] = id
  deliveries[#deliveries + 1] = h
  deliveries[#deliveries + 1] = b or ''
  deliveries[#deliveries + 1] = x
  deliveries[#deliveries + 1] = n + count_from
  remaining = remaining - 1
end

for q = 1, queues do
  local base = (q - 1) * 12
  local delayed = KEYS[base + 1]
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, 1000)
  for _, m in ipairs(due) do
    local level = string.byte(m, 1) - 48
    local size = tonumber(string.sub(m, 18, 25), 16)
    redis.call('XADD', KEYS[base + 3 + 9 - level], '*', 'h', string.sub(m, 26, 25 + size),
      'b', string.sub(m, 26 + size))
    redis.call('ZREM', delayed, m)
  end
  local first = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
  if #due == 1000 then
    next_due = now
  elseif first[2] then
    local at = tonumber(first[2])
    if next_due < 0 or at < next_due then next_due = at end
  end

  local mask = 1
  for level = 9, 1, -1 do
    if redis.call('EXISTS', KEYS[base + 3 + 9 - level]) == 1 then mask = mask + 2 ^ level end
  end
  head[q] = mask

  if sweep > 0 and remaining > 0 and redis.call('SET', KEYS[base + 2], '1', 'NX', 'PX', sweep) then
    for level = 9, 0, -1 do
      local key = KEYS[base + 3 + 9 - level]
      if remaining > 0 and math.floor(mask / 2 ^ level) % 2 == 1 then
        local cursor, rounds = '0-0', 0
        repeat
          local r = redis.pcall('XAUTOCLAIM', key, group, consumer, visibility, cursor, 'COUNT', remaining)
          if type(r) ~= 'table' or r.err then break end
          cursor = r[1]
          for _, e in ipairs(r[2]) do
            if e[2] then
              local p = redis.call('XPENDING', key, group, e[1], e[1], 1)
              emit(q, level, key, e[1], e[2], p[1] and p[1][4] or 2)
            else
              redis.call('XACK', key, group, e[1])
            end
          end
          rounds = rounds + 1
        until cursor == '0-0' or remaining <= 0 or rounds >= 100
      end
    end
    for level = 9, 0, -1 do
      local key = KEYS[base + 3 + 9 - level]
      local consumers = nil
      if math.floor(mask / 2 ^ level) % 2 == 1 then consumers = redis.pcall('XINFO', 'CONSUMERS', key, group) end
      if type(consumers) == 'table' and not consumers.err then
        for _, c in ipairs(consumers) do
          local name, pending, idle = nil, nil, nil
          for j = 1, #c, 2 do
            if c[j] == 'name' then name = c[j + 1]
            elseif c[j] == 'pending' then pending = c[j + 1]
            elseif c[j] == 'idle' then idle = c[j + 1] end
          end
          if name and name ~= consumer and pending == 0 and idle and idle > tonumber(visibility) then
            redis.call('XGROUP', 'DELCONSUMER', key, group, name)
          end
        end
      end
    end
    if remaining <= 0 then redis.call('DEL', KEYS[base + 2]) end
  end

  for level = 9, 0, -1 do
    local key = KEYS[base + 3 + 9 - level]
    if remaining > 0 and math.floor(mask / 2 ^ level) % 2 == 1 then
      local r = redis.pcall('XREADGROUP', 'GROUP', group, consumer, 'COUNT', remaining, 'STREAMS', key, '>')
      if type(r) == 'table' and r.err then
        if string.find(r.err, 'NOGROUP', 1, true) then
          redis.call('XGROUP', 'CREATE', key, group, '0', 'MKSTREAM')
          r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', remaining, 'STREAMS', key, '>')
        else
          return redis.error_reply(r.err)
        end
      end
      if r then
        for _, e in ipairs(r[1][2]) do emit(q, level, key, e[1], e[2], 1) end
      end
    end
  end
end

local out = {next_due}
for q = 1, queues do out[#out + 1] = head[q] end
for i = 1, #deliveries do out[#out + 1] = deliveries[i] end
return out
"""
)

#: Settle entries this consumer holds (an entry another consumer claimed meanwhile, or one
#: already settled, is left alone). KEYS: the streams named by the items, then for
#: ``dead`` the dead-letter streams. ARGV: group, consumer, mode, then per item: key number,
#: entry id (and for ``dead``: dead-letter key number, ``x`` field). Modes: ``ack`` (XACK +
#: XDEL), ``requeue`` (re-add at the end of its stream with the delivery count, then ack),
#: ``dead`` (copy to the dead-letter stream with ``x``, then ack), ``extend`` (XCLAIM JUSTID
#: to ourselves: resets the idle time, i.e. renews the lease). Returns how many were settled.
SETTLE = (
    _COMMON
    + """
local group, consumer, mode = ARGV[1], ARGV[2], ARGV[3]
local step = (mode == 'dead') and 4 or 2
local done = 0
for i = 4, #ARGV, step do
  local key = KEYS[tonumber(ARGV[i])]
  local id = ARGV[i + 1]
  local p = held(key, group, consumer, id)
  if p then
    if mode == 'extend' then
      redis.call('XCLAIM', key, group, consumer, 0, id, 'JUSTID')
    else
      if mode == 'requeue' then
        local e = redis.call('XRANGE', key, id, id)
        if e[1] then
          local h, b, n, x = parse(e[1][2])
          local f = {'h', h or '', 'b', b or '', 'n', tostring(n + tonumber(p[4]))}
          if x ~= '' then f[#f + 1] = 'x'; f[#f + 1] = x end
          redis.call('XADD', key, '*', unpack(f))
        end
      elseif mode == 'dead' then
        local e = redis.call('XRANGE', key, id, id)
        if e[1] then
          local h, b = parse(e[1][2])
          redis.call('XADD', KEYS[tonumber(ARGV[i + 2])], '*', 'h', h or '', 'b', b or '', 'x', ARGV[i + 3])
        end
      end
      redis.call('XACK', key, group, id)
      redis.call('XDEL', key, id)
    end
    done = done + 1
  end
end
return done
"""
)

#: Hand back every entry ``consumer`` holds on the given streams (re-added at the end of
#: their stream with their delivery count), then delete the consumer. ARGV: group, consumer.
RETURN_PENDING = (
    _COMMON
    + """
local group, consumer = ARGV[1], ARGV[2]
local returned = 0
for _, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    while true do
      local p = redis.pcall('XPENDING', key, group, '-', '+', 100, consumer)
      if type(p) ~= 'table' or p.err or #p == 0 then break end
      for _, entry in ipairs(p) do
        local id = entry[1]
        local e = redis.call('XRANGE', key, id, id)
        if e[1] then
          local h, b, n, x = parse(e[1][2])
          if h then
            local f = {'h', h, 'b', b or '', 'n', tostring(n + tonumber(entry[4]))}
            if x ~= '' then f[#f + 1] = 'x'; f[#f + 1] = x end
            redis.call('XADD', key, '*', unpack(f))
            returned = returned + 1
          end
        end
        redis.call('XACK', key, group, id)
        redis.call('XDEL', key, id)
      end
    end
    redis.pcall('XGROUP', 'DELCONSUMER', key, group, consumer)
  end
end
return returned
"""
)

#: Publish to a priority level above 0. KEYS: the level's stream, the queue's wake stream.
#: ARGV: h, b. A stream seen for the first time wakes blocked consumers (they block only on
#: the streams that existed at their last fetch).
PUBLISH_LEVEL = """
local new = redis.call('EXISTS', KEYS[1]) == 0
redis.call('XADD', KEYS[1], '*', 'h', ARGV[1], 'b', ARGV[2])
if new then redis.call('XADD', KEYS[2], 'MAXLEN', '~', 16, '*', 't', '1') end
return 1
"""

#: Publish a delayed message. KEYS: delayed set, wake stream. ARGV: due time (unix ms),
#: member. When it is now the earliest, blocked consumers are woken to shorten their wait.
PUBLISH_DELAYED = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
local first = redis.call('ZRANGE', KEYS[1], 0, 0)
if first[1] == ARGV[2] then redis.call('XADD', KEYS[2], 'MAXLEN', '~', 16, '*', 't', '1') end
return 1
"""

#: Ready messages of one queue: per level, entries not yet delivered to the group (all
#: entries where no group exists yet). KEYS: the ten streams. ARGV: group.
QUEUE_LENGTH = """
local total = 0
for _, key in ipairs(KEYS) do
  local length = redis.call('XLEN', key)
  if length > 0 then
    local p = redis.pcall('XPENDING', key, ARGV[1])
    if type(p) == 'table' and not p.err then length = length - p[1] end
    if length > 0 then total = total + length end
  end
end
return total
"""

#: Age (ms, by the server's clock) of the oldest ready message of one queue: per level, the
#: first entry after the group's last-delivered id (the first entry where no group exists
#: yet; a stream id starts with its unix ms), and delayed messages already due (waiting since
#: their due time, until a fetch moves them into their stream); delayed messages still ahead
#: are not ready. KEYS: the ten streams, then the delayed set. ARGV: group. Returns -1 when
#: nothing is ready.
OLDEST_MESSAGE_AGE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local oldest = -1
local function seen(ms)
  if oldest < 0 or ms < oldest then oldest = ms end
end
for i = 1, #KEYS - 1 do
  local key = KEYS[i]
  if redis.call('EXISTS', key) == 1 then
    local start = '-'
    local groups = redis.pcall('XINFO', 'GROUPS', key)
    if type(groups) == 'table' and not groups.err then
      for _, g in ipairs(groups) do
        local name, last = nil, nil
        for j = 1, #g, 2 do
          if g[j] == 'name' then name = g[j + 1] elseif g[j] == 'last-delivered-id' then last = g[j + 1] end
        end
        if name == ARGV[1] and last then start = '(' .. last end
      end
    end
    local first = redis.call('XRANGE', key, start, '+', 'COUNT', 1)
    if first[1] then seen(tonumber(string.match(first[1][1], '^(%d+)'))) end
  end
end
local due = redis.call('ZRANGEBYSCORE', KEYS[#KEYS], '-inf', now, 'WITHSCORES', 'LIMIT', 0, 1)
if due[2] then seen(tonumber(due[2])) end
if oldest < 0 then return -1 end
return math.max(now - oldest, 0)
"""

#: Delete the ready messages of one queue (entries not delivered yet), leaving delivered
#: ones to their consumers. KEYS: the ten streams. ARGV: group. Returns how many.
PURGE = """
local group, purger = ARGV[1], 'celeriac-purge'
local total = 0
for _, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    local probe = redis.pcall('XPENDING', key, group)
    if type(probe) == 'table' and probe.err then
      total = total + redis.call('XLEN', key)
      redis.call('DEL', key)
    else
      while true do
        local r = redis.call('XREADGROUP', 'GROUP', group, purger, 'COUNT', 1000, 'STREAMS', key, '>')
        if not r then break end
        local ids = {}
        for _, e in ipairs(r[1][2]) do ids[#ids + 1] = e[1] end
        if #ids == 0 then break end
        redis.call('XACK', key, group, unpack(ids))
        redis.call('XDEL', key, unpack(ids))
        total = total + #ids
      end
      redis.call('XGROUP', 'DELCONSUMER', key, group, purger)
    end
  end
end
return total
"""
