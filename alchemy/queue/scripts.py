"""Lua source of every multi-step state change. Each runs atomically inside Redis, so a
crash of any process between two of its lines can neither lose nor duplicate a job.

Time always comes from the Redis server (TIME), never from a worker's clock. Every step that
moves a job out of a processing list first checks that LREM removed it, so re-sending a step
after a lost reply does nothing twice.
"""

from __future__ import annotations

from typing import Final

_NOW: Final = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

# Token bucket refill; leaves `tokens` and saves nothing. Needs rate, cap, now. The bucket
# holds at most `cap` = 1 + rate_burst tokens and refills at `rate` tokens per ms, so any
# window of one period holds at most limit + rate_burst starts, and starts of a backlog come
# one refill interval apart. It may owe one token (down to -1): a job claimed with the next
# token to arrive starts when it arrives.
_REFILL: Final = """
local state = redis.call('HMGET', bucket, 'tokens', 'ts')
local tokens = tonumber(state[1]) or cap
local ts = tonumber(state[2]) or now
if tokens > cap then tokens = cap end
if now > ts then
  tokens = math.min(cap, tokens + (now - ts) * rate)
  ts = now
end
local function save_bucket()
  redis.call('HSET', bucket, 'tokens', tostring(tokens), 'ts', tostring(ts))
  redis.call('PEXPIRE', bucket, bucket_ttl)
end
"""

# The queue is held (paused, paused-until, held) or not; sets `stop` to a reply when it is.
# Needs KEYS[paused_until_at], KEYS[paused_at], KEYS[held_at].
_HOLDS: Final = """
local function held_reply(paused_until, paused, held)
  if redis.call('EXISTS', paused) == 1 then return {3, -1} end
  local pause = redis.call('PTTL', paused_until)
  if pause > 0 then return {3, pause} end
  local hold = redis.call('GET', held)
  if hold then return {4, redis.call('PTTL', held), hold} end
  return nil
end
"""

# KEYS: wait, processing, delayed, bucket, paused_until, paused, held
# ARGV: max_jobs, rate (tokens per ms, 0 = unlimited), cap, bucket_ttl_ms, promote_batch
# Returns {1, now, item...} claimed, one token each | {6, ms, now, item} claimed with the
# next token, which comes in ms: start it then (now: Redis's clock, ms, to tell a late
# start) | {0, ms} nothing waiting (no token taken), the next
# retry is due in ms (-1: none) | {2, ms} throttled: the next token is spoken for, look
# again in ms (when it arrives, to take the one after) |
# {3, ms} paused for ms (-1: until resumed) | {4, ms, hold} held: a dependency is down
# (hold = the held key's JSON; ms = its TTL)
CLAIM: Final = (
    _NOW
    + _HOLDS
    + """
local wait, processing, delayed, bucket = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local rate, cap, bucket_ttl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local due = redis.call('ZRANGE', delayed, '-inf', now, 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[5]))
for i = 1, #due do
  redis.call('ZREM', delayed, due[i])
  redis.call('LPUSH', wait, due[i])
end
local stop = held_reply(KEYS[5], KEYS[6], KEYS[7])
if stop then return stop end
local take = math.min(tonumber(ARGV[1]), redis.call('LLEN', wait))
if take == 0 then
  local first = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
  if first[2] then return {0, math.max(0, tonumber(first[2]) - now)} end
  return {0, -1}
end
if rate > 0 then
"""
    + _REFILL
    + """
  if tokens < 0 then
    save_bucket()
    return {2, math.ceil(-tokens / rate)}
  end
  if tokens < 1 then
    -- The next token is less than one interval away: take it now and start the job when
    -- it arrives, so starts keep their pace however late a claim comes.
    local wait_ms = math.ceil((1 - tokens) / rate)
    tokens = tokens - 1
    save_bucket()
    return {6, wait_ms, now, redis.call('LMOVE', wait, processing, 'RIGHT', 'LEFT')}
  end
  take = math.min(take, math.floor(tokens))
  tokens = tokens - take
  save_bucket()
end
local out = {1, now}
for i = 1, take do
  out[i + 2] = redis.call('LMOVE', wait, processing, 'RIGHT', 'LEFT')
end
return out
"""
)

# KEYS: processing, wait, paused_until, paused, held, bucket
# ARGV: item, rate, cap, bucket_ttl_ms
# After a blocking fetch took `item` (without a token), or a start came too late for its
# token: go on with a token, or put it back at the front of the wait list. Returns
# {1, now} go | {6, ms, now} go in ms (the next token; now: Redis's clock, ms) | {5}
# the item is no longer in our processing list (a re-send after a lost reply: it went back
# already) | {2, ms} throttled | {3, ms} paused | {4, ms, hold} held.
CONFIRM: Final = (
    _NOW
    + _HOLDS
    + """
if not redis.call('LPOS', KEYS[1], ARGV[1]) then return {5} end
local function put_back()
  redis.call('LREM', KEYS[1], 1, ARGV[1])
  redis.call('RPUSH', KEYS[2], ARGV[1])
end
local stop = held_reply(KEYS[3], KEYS[4], KEYS[5])
if stop then
  put_back()
  return stop
end
local bucket = KEYS[6]
local rate, cap, bucket_ttl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if rate > 0 then
"""
    + _REFILL
    + """
  if tokens < 0 then
    save_bucket()
    put_back()
    return {2, math.ceil(-tokens / rate)}
  end
  tokens = tokens - 1
  save_bucket()
  if tokens < 0 then return {6, math.ceil(-tokens / rate), now} end
end
return {1, now}
"""
)

# KEYS: processing   ARGV: item...   Returns how many were removed.
ACK: Final = """
local removed = 0
for i = 1, #ARGV do
  removed = removed + redis.call('LREM', KEYS[1], 1, ARGV[i])
end
return removed
"""

# KEYS: processing, delayed   ARGV: item, envelope, delay_ms
RETRY: Final = (
    _NOW
    + """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[2])
return 1
"""
)

# KEYS: processing, delayed, paused_until   ARGV: item, envelope, delay_ms
# The upstream said "retry after": pause the whole queue (never shortening a pause already
# in force) and bring the job back when the pause ends, without spending an attempt.
DEFER_AND_PAUSE: Final = (
    _NOW
    + """
local delay = tonumber(ARGV[3])
if redis.call('PTTL', KEYS[3]) < delay then
  redis.call('SET', KEYS[3], tostring(now + delay), 'PX', delay)
end
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], now + delay, ARGV[2])
return 1
"""
)

# Keeps a dead-letter list at its cap after a push: drops the oldest entries, at most
# DEAD_TRIM_MAX a step (a cap lowered by far is reached over several dead letters, never in
# one long step), and counts them. Needs dead, trimmed (keys) and max_dead.
DEAD_TRIM_MAX: Final = 10_000
_TRIM_DEAD: Final = f"""
local over = math.min(redis.call('LLEN', dead) - max_dead, {DEAD_TRIM_MAX})
if over > 0 then
  redis.call('LTRIM', dead, 0, -over - 1)
  redis.call('INCRBY', trimmed, over)
end
"""

# KEYS: processing, dead, dead_trimmed   ARGV: item, entry, max_dead
DEAD_LETTER: Final = (
    """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
local dead, trimmed, max_dead = KEYS[2], KEYS[3], tonumber(ARGV[3])
"""
    + _TRIM_DEAD
    + """
return 1
"""
)

# KEYS: processing, wait   ARGV: item
# Back to the front of the wait list, unchanged: no attempt spent, no recovery counted.
REQUEUE: Final = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
return 1
"""

# KEYS: processing, wait   ARGV: item, envelope
# Back to the front of the wait list as a new envelope (no attempt spent).
REQUEUE_FRONT: Final = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[2])
return 1
"""

# KEYS: processing, wait, held   ARGV: item, envelope, hold (JSON), hold_ttl_ms
# A dependency the handler needs is down: the job goes back to the front of the wait list
# as a new envelope (no attempt spent), and the queue holds until the dependency answers
# (the process that saw it probes it, renewing the hold; the TTL frees the queue if that
# process dies).
HOLD: Final = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], ARGV[3], 'PX', tonumber(ARGV[4]))
return 1
"""

# KEYS: held   ARGV: hold (JSON), hold_ttl_ms, dependency
# Set or renew the hold of a queue for `dependency`, unless another dependency holds it.
HOLD_RENEW: Final = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, hold = pcall(cjson.decode, current)
  if ok and type(hold) == 'table' and hold['dependency'] ~= ARGV[3] then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
return 1
"""

# KEYS: held   ARGV: dependency   The dependency answers again: lift its hold.
HOLD_RELEASE: Final = """
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
local ok, hold = pcall(cjson.decode, current)
if ok and type(hold) == 'table' and hold['dependency'] ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""

# Delayed jobs waiting for a budget (their last error a BudgetExhaustedError, whose message
# names the scope: "brand <uuid>" or "provider <name>"). A cheap plain-text test first, then
# the envelope decoded. Needs `delayed` (key), `needle` (the scope, "" = any), `last` (the
# last rank to look at, -1 = all) and `visit`.
_BUDGET_HELD: Final = """
local function each_budget_held(delayed, needle, last, visit)
  local members = redis.call('ZRANGE', delayed, 0, last, 'WITHSCORES')
  for i = 1, #members, 2 do
    local member = members[i]
    if string.find(member, 'BudgetExhaustedError', 1, true)
        and (needle == '' or string.find(member, needle, 1, true)) then
      local ok, obj = pcall(cjson.decode, member)
      if ok and type(obj) == 'table' and type(obj['_alchemy']) == 'table' then
        local last = obj['_alchemy']['last_error']
        if type(last) == 'table' and last['type'] == 'BudgetExhaustedError'
            and type(last['message']) == 'string'
            and (needle == '' or string.find(last['message'], needle, 1, true)) then
          visit(member, tonumber(members[i + 1]), last['message'])
        end
      end
    end
  end
end
"""

# KEYS: delayed, wait   ARGV: scope ("brand <uuid>", "provider <name>" or "" for every one)
# An operator raised a budget: its held jobs go onto the wait list now, as a due retry
# would (a consumer blocked on the list wakes at once). Returns how many.
RELEASE_BUDGET_HOLDS: Final = (
    _BUDGET_HELD
    + """
local moved = 0
each_budget_held(KEYS[1], ARGV[1], -1, function(member, score, message)
  if redis.call('ZREM', KEYS[1], member) == 1 then
    redis.call('LPUSH', KEYS[2], member)
    moved = moved + 1
  end
end)
return moved
"""
)

# KEYS: delayed   ARGV: how many of the soonest due to look at
# Returns {scope, count, ...}: the jobs held per budget scope among them (a held job is due
# within [budgets] recheck, so it is among the soonest unless many retries come first).
COUNT_BUDGET_HOLDS: Final = (
    _BUDGET_HELD
    + """
local counts, order = {}, {}
each_budget_held(KEYS[1], '', tonumber(ARGV[1]) - 1, function(member, score, message)
  local scope = string.match(message, '^budget_exhausted: (%a+ [^ ]+)') or 'unknown'
  if not counts[scope] then counts[scope] = 0; table.insert(order, scope) end
  counts[scope] = counts[scope] + 1
end)
local reply = {}
for _, scope in ipairs(order) do
  table.insert(reply, scope)
  table.insert(reply, counts[scope])
end
return reply
"""
)

# KEYS: processing, wait   Every job left in a processing list back to the front of the
# wait list, oldest first, unchanged.
REQUEUE_ALL: Final = """
local moved = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') do
  moved = moved + 1
end
return moved
"""

# KEYS: processing (of the dead process), wait, dead, heartbeat (of the dead process),
#       consumers, dead_trimmed
# ARGV: identity, max_recoveries, queue, require_dead ("1": do nothing while the heartbeat
#       lives), max_dead
# Returns {-1} when the process is alive after all, else {1, then per job: id ('' when
# unknown), attempt, recoveries, 'r' (back on wait) or 'p' (dead-lettered as poison), the
# producer's job for 'p' ('' for 'r')}.
RECOVER: Final = (
    _NOW
    + """
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[4]) == 1 then return {-1} end
local max_recoveries = tonumber(ARGV[2])
local reply = {1}
while true do
  local item = redis.call('LPOP', KEYS[1])
  if not item then break end
  local meta, job = nil, item
  local ok, obj = pcall(cjson.decode, item)
  if ok and type(obj) == 'table' and type(obj['_alchemy']) == 'table'
      and type(obj['job']) == 'string' then
    meta, job = obj['_alchemy'], obj['job']
  else
    meta = {v = 1, attempt = 1, recoveries = 0}
    if ok and type(obj) == 'table' and type(obj['id']) == 'string' then meta['id'] = obj['id'] end
  end
  meta['recoveries'] = (tonumber(meta['recoveries']) or 0) + 1
  local id = meta['id']
  if type(id) ~= 'string' then id = '' end
  local outcome = 'r'
  if meta['recoveries'] > max_recoveries then
    outcome = 'p'
    local entry = {
      v = 1, queue = ARGV[3], id = meta['id'] or cjson.null, reason = 'poison',
      error = {type = 'ProcessDied', message = 'the process running this job died '
        .. meta['recoveries'] .. ' times (limit ' .. max_recoveries .. ')'},
      attempts = tonumber(meta['attempt']) or 1, recoveries = meta['recoveries'],
      first_attempt_ms = meta['first_attempt_ms'] or cjson.null, dead_at_ms = now, job = job
    }
    redis.call('LPUSH', KEYS[3], cjson.encode(entry))
  else
    redis.call('RPUSH', KEYS[2],
      '{"_alchemy":' .. cjson.encode(meta) .. ',"job":' .. cjson.encode(job) .. '}')
  end
  local n = #reply
  reply[n + 1] = id
  reply[n + 2] = tonumber(meta['attempt']) or 1
  reply[n + 3] = meta['recoveries']
  reply[n + 4] = outcome
  if outcome == 'p' then reply[n + 5] = job else reply[n + 5] = '' end
end
if ARGV[4] == '1' then
  redis.call('ZREM', KEYS[5], ARGV[1])
end
local dead, trimmed, max_dead = KEYS[3], KEYS[6], tonumber(ARGV[5])
"""
    + _TRIM_DEAD
    + """
return reply
"""
)

# KEYS: the identity's claim   ARGV: value (JSON with "incarnation"), incarnation, ttl_ms,
#       replaceable (an incarnation known to be dead that may be replaced, or '')
# Returns {1} claimed (or already ours: safe to re-send) | {0, holder's value, its PTTL ms}.
CLAIM_IDENTITY: Final = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, holder = pcall(cjson.decode, current)
  local incarnation = ok and type(holder) == 'table' and holder['incarnation'] or nil
  if incarnation ~= ARGV[2] and (ARGV[4] == '' or incarnation ~= ARGV[4]) then
    return {0, current, redis.call('PTTL', KEYS[1])}
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[3]))
return {1}
"""

# KEYS: the identity's claim   ARGV: value, incarnation, ttl_ms
# With the heartbeat: extend our claim, or take it again if it expired meanwhile (a Redis
# outage, a frozen process) and nobody else took it. Returns 1, or 0 when another
# incarnation holds it now (this process has lost its identity).
RENEW_IDENTITY: Final = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, holder = pcall(cjson.decode, current)
  if not (ok and type(holder) == 'table' and holder['incarnation'] == ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[3]))
return 1
"""

# KEYS: the identity's claim   ARGV: incarnation   Let go of our claim (a clean stop).
RELEASE_IDENTITY: Final = """
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
local ok, holder = pcall(cjson.decode, current)
if ok and type(holder) == 'table' and holder['incarnation'] == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: consumers, heartbeat   ARGV: identity, value, ttl_ms
HEARTBEAT: Final = (
    _NOW
    + """
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('SET', KEYS[2], ARGV[2], 'PX', tonumber(ARGV[3]))
return now
"""
)

# KEYS: consumers, heartbeat, processing   ARGV: identity
# Leave the queue only with an empty processing list; otherwise the heartbeat is dropped
# and the recovery sweep of another process returns what is left.
DEREGISTER: Final = """
redis.call('DEL', KEYS[2])
if redis.call('LLEN', KEYS[3]) > 0 then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"""

# KEYS: dead, dead_trimmed
# ARGV: position (entries already passed, counted from the oldest end), trimmed (the
#       dead_trimmed count when position was taken), max_entries, max_bytes, job_id ('':
#       every entry), needle... (substrings one of which an entry with that id contains)
# Read-only: looks at up to max_entries entries (fewer once max_bytes of them were read)
# from position towards the newest, oldest first. Entries trimmed since position was taken
# moved every position down by as many, which it makes good first. Returns {the next
# position, the trimmed count now, the list's length, then for each entry found: its
# position, the entry}. A candidate (one that holds a needle) is decoded to be sure of its id.
DEAD_SCAN: Final = """
local dead = KEYS[1]
local trimmed = tonumber(redis.call('GET', KEYS[2]) or '0')
local position = math.max(0, tonumber(ARGV[1]) - (trimmed - tonumber(ARGV[2])))
local max_bytes, id = tonumber(ARGV[4]), ARGV[5]
local length = redis.call('LLEN', dead)
local stop = math.min(length, position + tonumber(ARGV[3]))
local reply = {0, trimmed, length}
local function wanted(entry)
  if id == '' then return true end
  for i = 6, #ARGV do
    if string.find(entry, ARGV[i], 1, true) then
      local ok, fields = pcall(cjson.decode, entry)
      return ok and type(fields) == 'table' and fields['id'] == id
    end
  end
  return false
end
-- Read in batches of about 256 KiB, so that large entries never pile up in memory.
local read, batch = 0, 16
while position < stop and read < max_bytes do
  local last = math.min(stop, position + batch) - 1
  local entries = redis.call('LRANGE', dead, -last - 1, -position - 1)
  local got = 0
  for k = #entries, 1, -1 do
    local entry = entries[k]
    if wanted(entry) then
      reply[#reply + 1] = position
      reply[#reply + 1] = entry
    end
    position = position + 1
    got = got + #entry
    if read + got >= max_bytes then break end
  end
  read = read + got
  batch = math.max(1, math.min(1000, math.floor(batch * 262144 / math.max(got, 1))))
end
reply[1] = position
return reply
"""

# KEYS: dead, wait   ARGV: end, entry, job, [end, entry, job...]
# Dead-letter entries back to the wait list as the producer wrote them (attempts reset),
# in this order: each entry is removed (LREM, exactly that entry, looked for from the end
# it is nearer to: -1 the oldest, 1 the newest) and, if it was still there, its job pushed.
# Returns how many moved.
RETRY_DEAD: Final = """
local moved = 0
for i = 1, #ARGV, 3 do
  if redis.call('LREM', KEYS[1], tonumber(ARGV[i]), ARGV[i + 1]) == 1 then
    redis.call('LPUSH', KEYS[2], ARGV[i + 2])
    moved = moved + 1
  end
end
return moved
"""

# KEYS: dead   ARGV: end, entry, [end, entry...]   (end: as in RETRY_DEAD)
# Returns how many entries were removed.
PURGE_DEAD: Final = """
local removed = 0
for i = 1, #ARGV, 2 do
  removed = removed + redis.call('LREM', KEYS[1], tonumber(ARGV[i]), ARGV[i + 1])
end
return removed
"""

# -- for operators: the events stream and job records (alchemy.ops) ----------------------

# What each batch of job transitions leaves in Redis, for one queue, in one call: the events
# stream's entries and counts (alchemy.ops.events) and the job records (alchemy.ops.records).
# A process writing only one of them sends the other's arguments empty.
#
# The events part. KEYS[1] the stream, KEYS[2] the throughput hash, KEYS[3] the per-minute
# hash. ARGV[1] MAXLEN (0: no entries), ARGV[2] window in seconds, ARGV[3] completed, ARGV[4]
# failed, ARGV[5] the entries: a JSON array of arrays of strings (field, value, field, ...),
# ARGV[6] minutes kept in the per-minute hash (fields MINUTE:c and MINUTE:f, MINUTE = Unix
# time // 60 by Redis's clock; older ones dropped once it holds two more minutes).
# One JSON argument rather than one argument per string: packing a command costs the
# client about a microsecond per argument in redis-py; Redis decodes JSON in C (expanding
# compact values into fields in Lua instead was measured twice as slow).
# The per-second counts are keyed by Redis's clock, so every process counts alike; fields
# older than the window are dropped once the hash holds four times the window.
_EVENTS_PART: Final = """
local maxlen = tonumber(ARGV[1])
if maxlen > 0 then
  for _, fields in ipairs(cjson.decode(ARGV[5])) do
    redis.call('XADD', KEYS[1], '*', unpack(fields))
  end
  redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', maxlen)
end
local window = tonumber(ARGV[2])
local done = tonumber(ARGV[3])
local failed = tonumber(ARGV[4])
if done + failed > 0 then
  local now = tonumber(redis.call('TIME')[1])
  if done > 0 then redis.call('HINCRBY', KEYS[2], now .. ':c', done) end
  if failed > 0 then redis.call('HINCRBY', KEYS[2], now .. ':f', failed) end
  if redis.call('HLEN', KEYS[2]) > 4 * window + 20 then
    local old = {}
    for _, f in ipairs(redis.call('HKEYS', KEYS[2])) do
      local sec = tonumber(string.match(f, '^(%d+)'))
      if sec == nil or sec < now - window then old[#old + 1] = f end
    end
    for j = 1, #old, 500 do
      redis.call('HDEL', KEYS[2], unpack(old, j, math.min(j + 499, #old)))
    end
  end
  redis.call('EXPIRE', KEYS[2], window + 60)
  local minute = math.floor(now / 60)
  if done > 0 then redis.call('HINCRBY', KEYS[3], minute .. ':c', done) end
  if failed > 0 then redis.call('HINCRBY', KEYS[3], minute .. ':f', failed) end
  local minutes = tonumber(ARGV[6])
  if redis.call('HLEN', KEYS[3]) > 2 * minutes + 4 then
    local old = {}
    for _, f in ipairs(redis.call('HKEYS', KEYS[3])) do
      local m = tonumber(string.match(f, '^(%d+)'))
      if m == nil or m <= minute - minutes then old[#old + 1] = f end
    end
    if #old > 0 then redis.call('HDEL', KEYS[3], unpack(old)) end
  end
  redis.call('EXPIRE', KEYS[3], (minutes + 1) * 60)
end
"""

# The records part. KEYS[4] current generation, KEYS[5] old generation.
# ARGV[7] ttl ms, ARGV[8] records per generation, ARGV[9] a JSON array of [id, flags, JSON
# record] ('': no records), ARGV[10] runs kept in a record's attempts. Flags
# (alchemy.ops.records):
#   1 LEND: the stored record (an earlier run, maybe in another process) lends
#     first_started_ms when it is earlier or the new one has none, last_error when the new
#     one has none, and its attempts go
#     before the new one's (the oldest beyond ARGV[10] dropped and counted), so a job retried
#     on another process keeps its history;
#   4 JOINS (with LEND): the new record's first run is the end of the stored record's last
#     run, if that one is still running and of the same attempt: it takes its place;
#   2 PATCH: the new record only reports progress: when the stored record is of the same
#     attempt it keeps everything but progress, step and updated_ms, which it takes.
# (One JSON argument, not three per record, as for the entries.) Results are JSON text in a
# string field, so re-encoding a record here never changes them.
_RECORDS_PART: Final = """
if ARGV[9] ~= '' then
  local cur, old = KEYS[4], KEYS[5]
  local ttl = tonumber(ARGV[7])
  local per_generation = tonumber(ARGV[8])
  local batch = cjson.decode(ARGV[9])
  local keep = tonumber(ARGV[10])
  local size = redis.call('HLEN', cur)
  if size > 0 then
    local left = redis.call('PTTL', cur)
    if size + #batch > per_generation or left < ttl / 2 then
      redis.call('UNLINK', old)
      redis.call('RENAME', cur, old)
      size = 0
    end
  end
  local function stored(id)
    local raw = redis.call('HGET', cur, id) or redis.call('HGET', old, id)
    if not raw then return nil end
    local ok, o = pcall(cjson.decode, raw)
    if ok and type(o) == 'table' then return o end
    return nil
  end
  local function lend(r, o, joins)
    local earlier = tonumber(o.first_started_ms)
    if earlier and (r.first_started_ms == cjson.null or earlier < r.first_started_ms) then
      r.first_started_ms = earlier
    end
    if r.last_error == cjson.null and o.last_error ~= nil then r.last_error = o.last_error end
    if type(o.attempts) ~= 'table' or #o.attempts == 0 then return end
    local runs = {}
    for _, a in ipairs(o.attempts) do runs[#runs + 1] = a end
    local first, last = r.attempts[1], runs[#runs]
    if joins and first and last and last.outcome == 'running' and last.attempt == first.attempt then
      if first.started_ms == cjson.null then first.started_ms = last.started_ms end
      runs[#runs] = nil
    end
    for _, a in ipairs(r.attempts) do runs[#runs + 1] = a end
    local dropped = tonumber(o.attempts_dropped) or 0
    while #runs > keep do
      table.remove(runs, 1)
      dropped = dropped + 1
    end
    r.attempts = runs
    r.attempts_dropped = dropped
  end
  for _, item in ipairs(batch) do
    local id, flags, rec = item[1], item[2], item[3]
    if flags % 2 == 1 then
      local o = stored(id)
      if o then
        local r = cjson.decode(rec)
        lend(r, o, flags >= 4)
        rec = cjson.encode(r)
      end
    elseif flags == 2 then
      local o = stored(id)
      if o then
        local r = cjson.decode(rec)
        if o.attempt == r.attempt then
          o.progress, o.step, o.updated_ms = r.progress, r.step, r.updated_ms
          rec = cjson.encode(o)
        end
      end
    end
    redis.call('HSET', cur, id, rec)
  end
  if size == 0 then
    redis.call('PEXPIRE', cur, ttl)
  end
end
"""

# Both parts in one call: a writer with events and records on makes one round trip per queue
# and batch, not two (issue 12: 109 -> 88 us of the worker's CPU per no-op job).
TRANSITIONS_WRITE: Final = _EVENTS_PART + _RECORDS_PART + "return 1\n"

# -- for the dashboard: bounded reads --------------------------------------------------------

# KEYS: wait. Returns {the oldest waiting job's enqueued_at as written ('' when none is
# found in its first 4 KiB, false when the list is empty), Redis TIME seconds, microseconds}.
# Copies one item (the oldest, at the right end) into Lua: O(1) list work.
OLDEST_ENQUEUED: Final = r"""
local item = redis.call('LINDEX', KEYS[1], -1)
local t = redis.call('TIME')
if not item then return {false, t[1], t[2]} end
local head = string.sub(item, 1, 4096)
local v = string.match(head, 'enqueued_at\\?"%s*:%s*(%-?[%d%.eE+]+)')
return {v or '', t[1], t[2]}
"""

# KEYS: dead. ARGV: entries to look at (the newest), max_bytes.
# Read-only: counts the newest entries by dead-letter reason and error type (read with a
# pattern: in an entry only its own keys have unescaped quotes, a payload's are escaped),
# reading at most max_bytes of them. Returns {entries looked at, the list's length, then
# "REASON\nTYPE", count, ...} in the order first seen.
DEAD_GROUPS: Final = """
local length = redis.call('LLEN', KEYS[1])
local want = math.min(length, tonumber(ARGV[1]))
local max_bytes = tonumber(ARGV[2])
local counts, order = {}, {}
local position, read, batch = 0, 0, 16
while position < want and read < max_bytes do
  local entries = redis.call('LRANGE', KEYS[1], position, math.min(want, position + batch) - 1)
  local got = 0
  for _, entry in ipairs(entries) do
    local reason = string.match(entry, '"reason":"([^"]*)"') or '?'
    local kind = string.match(entry, '"type":"([^"]*)"') or '?'
    local key = reason .. '\\n' .. kind
    if counts[key] == nil then
      counts[key] = 0
      order[#order + 1] = key
    end
    counts[key] = counts[key] + 1
    position = position + 1
    got = got + #entry
    if read + got >= max_bytes then break end
  end
  read = read + got
  batch = math.max(1, math.min(1000, math.floor(batch * 262144 / math.max(got, 1))))
end
local reply = {position, length}
for _, key in ipairs(order) do
  reply[#reply + 1] = key
  reply[#reply + 1] = counts[key]
end
return reply
"""

# -- for handlers: follow-up jobs pushed at most once (alchemy.queue.producer) -----------

# KEYS: the job's enqueued marker, wait   ARGV: job, marker ttl_ms
# Push the job unless its marker exists; the marker and the push are one step, so a job is
# pushed at most once per marker lifetime however often this is sent (a re-send after a
# lost reply finds the marker and pushes nothing). Returns 1 pushed, 0 already pushed.
ENQUEUE_ONCE: Final = """
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', tonumber(ARGV[2])) then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
"""
