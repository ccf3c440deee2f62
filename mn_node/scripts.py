"""Every Lua script of the project, in one place. Loaded once, called by SHA; the Python side
binds each one to a named attribute of :class:`mn_node.store.Scripts`.

Tokens are ``node|incarnation|epoch``. A lease key holds the token of its current holder;
``{ns}:epoch:<lease>`` is INCRed on every grant, so epochs only grow. Fenced writes carry
the writer's token and are refused unless it equals the lease's current value; objects that
hold fenced state also keep ``_fence`` (the highest epoch written) and refuse lower epochs.

**All or nothing.** Redis does not roll back a script's earlier writes when a later command
or check fails, so every script first checks *everything* (tokens, fences, statuses, argument
shapes, JSON decoding) and only then writes. A refusal leaves the data exactly as it was.
Refusals of a fenced write are error replies starting with ``FENCED`` (raised in Python as
:class:`~mn_node.errors.FencedWriteRefused`); :data:`LEASE_REFUSALS` are the ones that mean the
writer's lease is no longer its own (the others refuse the write but not the writer).
"""

from __future__ import annotations

# Job statuses a job never leaves. The single definition: jobs/state.py re-exports it, and the
# Lua check below is generated from it.
TERMINAL = ("completed", "failed", "cancelled")

# FENCED refusals that prove the writer's lease is lost (its token or epoch is not current);
# ``FENCED job ...`` / ``FENCED agent ...`` refuse one write of a holder that is still current.
LEASE_REFUSALS = ("FENCED token", "FENCED epoch")

# ---- shared Lua heads (each prepended to the scripts that use it) -------------------------

# now_ms(): the server's clock in ms
_NOW_MS = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# is_terminal(status)
_TERMINAL = (
    "local TERMINAL = {" + ", ".join(f"[{s!r}] = true" for s in TERMINAL) + "}\n"
    "local function is_terminal(status) return status and TERMINAL[status] == true end\n"
)

# Argument checks, made before any write (an error from a command midway would not undo the
# writes before it). check_pairs(first): ARGV[first..] is a whole number of field/value pairs;
# check_numbers(i, ...): those ARGV are numbers. Each returns an error reply, or nil.
_ARGS = """
local function check_pairs(first)
  if (#ARGV - first + 1) % 2 ~= 0 then
    return redis.error_reply('odd number of field/value arguments')
  end
end
local function check_numbers(...)
  for _, i in ipairs({...}) do
    if not tonumber(ARGV[i]) then
      return redis.error_reply('argument ' .. i .. ' must be a number, got ' .. tostring(ARGV[i]))
    end
  end
end
"""

# fence_error(lease key, token, epoch, fence): the FENCED refusal of a write with `token` and
# `epoch` on an object whose highest written epoch is `fence`, or nil when it may write
_FENCE = """
local function fence_error(lease_key, token, epoch, fence)
  if redis.call('GET', lease_key) ~= token then
    return redis.error_reply('FENCED token not current')
  end
  if epoch < fence then
    return redis.error_reply('FENCED epoch ' .. epoch .. ' below ' .. fence)
  end
end
"""

# retain(id, ms, job keys, index, expiry index, bundle, bundle refs): a job turning terminal
# gives every key it owns a TTL of `ms` (MIRROR_NEURON_JOB_RETENTION), records its expiry in
# `{ns}:jobs:expiry` and drops from the history `{ns}:jobs` up to 64 ids whose expiry passed;
# it leaves its bundle's live-job set, and a bundle no live job uses expires with it (never
# sooner than a TTL it already has). Called after every check, as part of the terminal write.
_RETAIN = """
local function retain(id, ms, job_keys, index, expiry, bundle, refs)
  local now = now_ms()
  for _, k in ipairs(job_keys) do redis.call('PEXPIRE', k, ms) end
  redis.call('ZADD', expiry, now + ms, id)
  local gone = redis.call('ZRANGEBYSCORE', expiry, '-inf', now, 'LIMIT', 0, 64)
  if #gone > 0 then
    redis.call('ZREM', index, unpack(gone))
    redis.call('ZREM', expiry, unpack(gone))
  end
  if bundle then
    redis.call('SREM', refs, id)
    if redis.call('SCARD', refs) == 0 then
      local t = redis.call('PTTL', bundle)
      if t == -1 or (t >= 0 and t < ms) then redis.call('PEXPIRE', bundle, ms) end
    end
  end
end
"""

# ---- leases ---------------------------------------------------------------------------------

# KEYS: lease, epoch counter, events stream
# ARGV: owner prefix (node|incarnation), ttl ms, event type ('' = none), stream maxlen, lease name
ACQUIRE = _ARGS + """
local err = check_numbers(2, 4)
if err then return err end
local cur = redis.call('GET', KEYS[1])
if cur then
  return {0, cur, redis.call('PTTL', KEYS[1])}
end
local epoch = redis.call('INCR', KEYS[2])
local token = ARGV[1] .. '|' .. epoch
redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
if ARGV[3] ~= '' then
  local node = string.match(ARGV[1], '^([^|]*)')
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*',
    'type', ARGV[3], 'node', node, 'epoch', epoch, 'lease', ARGV[5], 'data', '{}')
end
return {1, token, epoch}
"""

# KEYS: lease keys; ARGV[1]: ttl ms, ARGV[2..]: the token held for each key.
# Per key by design: each lease is renewed or not on its own.
RENEW_ALL = """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i + 1] then
    redis.call('PEXPIRE', key, ARGV[1])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

# KEYS: lease, events stream; ARGV: token, event type ('' = none), maxlen, lease name, data json
RELEASE = _ARGS + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local err = ARGV[2] ~= '' and check_numbers(3)
if err then return err end
redis.call('DEL', KEYS[1])
if ARGV[2] ~= '' then
  local node, inc, epoch = string.match(ARGV[1], '^([^|]*)|([^|]*)|(%d+)$')
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*',
    'type', ARGV[2], 'node', node, 'epoch', epoch, 'lease', ARGV[4], 'data', ARGV[5])
end
return 1
"""

# KEYS: lease, hash; ARGV: token, epoch, field1, value1, ...
# Returns 1, or an error reply 'FENCED <why>'.
FENCED_HSET = _FENCE + _ARGS + """
local epoch = tonumber(ARGV[2])
local err = fence_error(KEYS[1], ARGV[1], epoch, tonumber(redis.call('HGET', KEYS[2], '_fence') or '0'))
  or check_pairs(3)
if err then return err end
local args = {'HSET', KEYS[2], '_fence', epoch}
for i = 3, #ARGV do
  args[#args + 1] = ARGV[i]
end
redis.call(unpack(args))
return 1
"""

# KEYS: lease, stream; ARGV: token, epoch, maxlen, field1, value1, ...
# A fenced append that also records the epoch; refuses epochs lower than the last appended.
FENCED_XADD = _FENCE + _ARGS + """
local epoch = tonumber(ARGV[2])
local fence = 0
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #last > 0 then
  local f = last[1][2]
  for i = 1, #f, 2 do
    if f[i] == 'epoch' then fence = tonumber(f[i + 1]) or 0 end
  end
end
local err = fence_error(KEYS[1], ARGV[1], epoch, fence) or check_numbers(3) or check_pairs(4)
if err then return err end
local args = {'XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'epoch', ARGV[2]}
for i = 4, #ARGV do
  args[#args + 1] = ARGV[i]
end
return redis.call(unpack(args))
"""

# ---- node registration ---------------------------------------------------------------------

# KEYS: node hash; ARGV: incarnation, ttl ms, ['force',] field1, value1, ...
# Writes only if the hash is absent or belongs to this incarnation (or 'force'); stamps
# refreshed_ms with the server's clock. Returns {1, incarnation}, or {0, holder incarnation}.
REGISTER = _NOW_MS + _ARGS + """
local force = ARGV[3] == 'force'
local holder = redis.call('HGET', KEYS[1], 'incarnation')
if holder and holder ~= ARGV[1] and not force then
  return {0, holder}
end
local first = force and 4 or 3
local err = check_numbers(2) or check_pairs(first)
if err then return err end
if force then redis.call('DEL', KEYS[1]) end
local args = {'HSET', KEYS[1], 'incarnation', ARGV[1], 'refreshed_ms', now_ms()}
for i = first, #ARGV do
  args[#args + 1] = ARGV[i]
end
redis.call(unpack(args))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, ARGV[1]}
"""

# KEYS: node hash; ARGV: incarnation. Deletes the registration only if it is ours.
UNREGISTER = """
if redis.call('HGET', KEYS[1], 'incarnation') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# ---- jobs --------------------------------------------------------------------------------
# Job hash fields: status, spec, owner, epoch, agents_total, agents_done, node:<name> (executor
# runs completed per node), result, error, submitted_ms, updated_ms, _fence.
# Agent states live in {ns}:job:<id>:agents as JSON {status, attempt, node, output, error, ...}.

# Coordinator write, fenced, all or nothing.
# KEYS: lease, job hash, agents hash, job events stream, active set, runs hash, attempts hash,
#       job lease epoch counter, history zset {ns}:jobs, expiry zset {ns}:jobs:expiry
#       [, bundle, bundle's live-job set]
# ARGV: token, epoch, job fields json (object), agent states json (object id -> state json),
#       events json (list of [type, data json]), node, terminal ('1': leaves the active set and
#       every key of the job expires after the retention), events stream maxlen, retention ms
# Returns 1, or 0 when the job is paused and the write would dispatch an agent (nothing written).
# A paused job stays paused: a 'running' status in the fields is not written.
JOB_WRITE = _NOW_MS + _TERMINAL + _ARGS + _FENCE + _RETAIN + """
local epoch = tonumber(ARGV[2])
local err = fence_error(KEYS[1], ARGV[1], epoch, tonumber(redis.call('HGET', KEYS[2], '_fence') or '0'))
if err then return err end
local status = redis.call('HGET', KEYS[2], 'status')
if is_terminal(status) then
  return redis.error_reply('FENCED job is already ' .. status)
end
local ok, fields, agents, events = pcall(function()
  return cjson.decode(ARGV[3]), cjson.decode(ARGV[4]), cjson.decode(ARGV[5])
end)
if not ok or type(fields) ~= 'table' or type(agents) ~= 'table' or type(events) ~= 'table' then
  return redis.error_reply('job_write: job fields, agents and events must be JSON objects/lists')
end
err = check_numbers(8, 9)
if err then return err end
if #KEYS ~= 10 and #KEYS ~= 12 then
  return redis.error_reply('job_write: expected 10 keys, or 12 with a bundle')
end
if status == 'paused' and fields['status'] == 'running' then fields['status'] = nil end
local agent_ids, done = {}, 0
for id, st in pairs(agents) do
  local old = redis.call('HGET', KEYS[3], id)
  if old and cjson.decode(old)['status'] == 'completed' then
    return redis.error_reply('FENCED agent ' .. id .. ' already completed')
  end
  local okst, new = pcall(cjson.decode, st)
  if not okst or type(new) ~= 'table' then
    return redis.error_reply('job_write: state of agent ' .. id .. ' is not a JSON object')
  end
  if new['status'] == 'completed' then done = done + 1 end
  if new['status'] == 'dispatched' and status == 'paused' then return 0 end
  agent_ids[#agent_ids + 1] = id
end
for _, ev in ipairs(events) do
  if type(ev[1]) ~= 'string' or type(ev[2]) ~= 'string' then
    return redis.error_reply('job_write: every event must be [type, data json]')
  end
end
-- every check passed: write
local job = {'HSET', KEYS[2], '_fence', epoch, 'owner', ARGV[6], 'epoch', epoch, 'updated_ms', now_ms()}
for k, v in pairs(fields) do
  job[#job + 1] = k
  job[#job + 1] = tostring(v)
end
redis.call(unpack(job))
for _, id in ipairs(agent_ids) do
  redis.call('HSET', KEYS[3], id, agents[id])
end
if done > 0 then redis.call('HINCRBY', KEYS[2], 'agents_done', done) end
for _, ev in ipairs(events) do
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[8], '*', 'type', ev[1], 'node', ARGV[6],
    'epoch', epoch, 'data', ev[2])
end
if ARGV[7] == '1' then
  local id = string.match(KEYS[2], ':job:(.*)$')
  redis.call('SREM', KEYS[5], id)
  retain(id, ARGV[9], {KEYS[2], KEYS[3], KEYS[4], KEYS[6], KEYS[7], KEYS[8]}, KEYS[9], KEYS[10], KEYS[11],
    KEYS[12])
end
return 1
"""



# ---- the executing node's batched writes -------------------------------------------------------
# Both scripts take many agents of one job in one call; each item is checked on its own (one
# agent's refusal does not refuse the others), and every argument of every item is checked
# before the first write, so a malformed call writes nothing. An item goes on only while the job
# is in one of the allowed statuses and the item's attempt is the agent's current dispatched one.
_CURRENT_ATTEMPT = """
local function attempt_refusal(job_status, allowed, agents_key, agent, attempt)
  if not allowed[job_status or ''] then return 'job is ' .. tostring(job_status) end
  local raw = redis.call('HGET', agents_key, agent)
  if not raw then return 'unknown agent' end
  local ok, st = pcall(cjson.decode, raw)
  if not ok or type(st) ~= 'table' then return 'unreadable agent state' end
  if st['status'] ~= 'dispatched' or tonumber(st['attempt']) ~= tonumber(attempt) then
    return 'attempt ' .. attempt .. ' is not current (agent is ' .. tostring(st['status']) ..
      ' attempt ' .. tostring(st['attempt']) .. ')'
  end
  return nil, st
end
"""

# Count the starts of many runs of one job: each start is counted in the runs hash only while its
# attempt is the dispatched one of a running job; a request that arrives late (it sat in a paused
# node's socket buffer while the coordinator replayed the agent elsewhere) is refused instead of
# re-running a completed executor.
# KEYS: job hash, agents hash, runs hash ; ARGV: agent1, attempt1, agent2, attempt2, ...
# Returns one entry per item: the agent's start count (a number) once counted, or the refusal (a string).
CLAIM_STARTS = _ARGS + _CURRENT_ATTEMPT + """
local err = check_pairs(1)
if err then return err end
for i = 2, #ARGV, 2 do
  err = check_numbers(i)
  if err then return err end
end
local status = redis.call('HGET', KEYS[1], 'status')
local out = {}
for i = 1, #ARGV, 2 do
  local why = attempt_refusal(status, {running = true}, KEYS[2], ARGV[i], ARGV[i + 1])
  out[#out + 1] = why or redis.call('HINCRBY', KEYS[3], ARGV[i], 1)
end
return out
"""

STORE_ITEM = 8  # ARGV per item of STORE_RESULTS

# The results of many runs of one job, written by the node that ran them before anyone is told:
# each only if its attempt is still the current one and the job is still running or paused (a
# pause stops new starts; the runs already going finish and their results count). With each
# result (or alone) goes the attempt's record for `mn logs`, written while the job hash exists;
# a job that is already terminal (the record came after a cancel) gives the attempts hash the
# job's own TTL, so no key of an expired job is left behind.
# KEYS: job hash, agents hash, runs hash, job events stream, attempts hash
# ARGV: node, events maxlen, then STORE_ITEM values per item: agent id, attempt,
#       'completed' | 'failed' | 'none' (record only), output json, error text,
#       extra state fields json (object, merged into the agent state: exit_code, started_ms,
#       duration_ms, complete_job, emits, next_state, ...), events json (list of [type, data json],
#       appended to the job's events stream with the node), attempt record json ('' = none)
# Returns one entry per item: 1 stored, 0 nothing to store (record only), or the refusal (a string).
STORE_RESULTS = _NOW_MS + _ARGS + _CURRENT_ATTEMPT + """
local err = check_numbers(2)
if err then return err end
if (#ARGV - 2) % """ + str(STORE_ITEM) + """ ~= 0 then
  return redis.error_reply('store_results: arguments must be node, maxlen and whole items')
end
local kinds = {completed = true, failed = true, none = true}
local items = {}
for i = 3, #ARGV, """ + str(STORE_ITEM) + """ do
  err = check_numbers(i + 1)
  if err then return err end
  if not kinds[ARGV[i + 2]] then
    return redis.error_reply('store_results: status must be completed, failed or none, got ' .. ARGV[i + 2])
  end
  local ok, extra, events = pcall(function() return cjson.decode(ARGV[i + 5]), cjson.decode(ARGV[i + 6]) end)
  if not ok or type(extra) ~= 'table' or type(events) ~= 'table' then
    return redis.error_reply('store_results: extra must be a JSON object, events a JSON list')
  end
  for _, ev in ipairs(events) do
    if type(ev[1]) ~= 'string' or type(ev[2]) ~= 'string' then
      return redis.error_reply('store_results: every event must be [type, data json]')
    end
  end
  items[#items + 1] = {i, extra, events}
end
-- every argument checked: each item is now refused or written on its own
local status = redis.call('HGET', KEYS[1], 'status')
local ttl = redis.call('PTTL', KEYS[1])
local now = now_ms()
local out, done, stored, records = {}, 0, 0, false
for _, item in ipairs(items) do
  local i, extra, events = item[1], item[2], item[3]
  local agent, kind = ARGV[i], ARGV[i + 2]
  if ARGV[i + 7] ~= '' and ttl ~= -2 then
    redis.call('HSET', KEYS[5], agent .. ':' .. ARGV[i + 1], ARGV[i + 7])
    records = true
  end
  local why, st = nil, nil
  if kind ~= 'none' then
    why, st = attempt_refusal(status, {running = true, paused = true}, KEYS[2], agent, ARGV[i + 1])
  end
  if kind == 'none' then
    out[#out + 1] = 0
  elseif why then
    out[#out + 1] = why
  else
    for k, v in pairs(extra) do st[k] = v end
    st['finished_ms'] = now
    st['node'] = ARGV[1]
    if kind == 'completed' then
      st['status'] = 'completed'
      st['output'] = ARGV[i + 3]
      done = done + 1
    else
      st['status'] = 'failed'
      st['error'] = ARGV[i + 4]
    end
    redis.call('HSET', KEYS[2], agent, cjson.encode(st))
    for _, ev in ipairs(events) do
      redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[2], '*', 'type', ev[1], 'node', ARGV[1], 'epoch', '',
        'data', ev[2])
    end
    out[#out + 1] = 1
    stored = stored + 1
  end
end
if records and ttl > 0 then redis.call('PEXPIRE', KEYS[5], ttl) end
if stored > 0 then redis.call('HSET', KEYS[1], 'updated_ms', now) end
if done > 0 then
  redis.call('HINCRBY', KEYS[1], 'agents_done', done)
  redis.call('HINCRBY', KEYS[1], 'node:' .. ARGV[1], done)
end
return out
"""

# A new job in one call: its hash, its place in the history and the active set, its first two
# events (job_pending, job_validated) and, for a bundle job, its reference to the bundle (which
# then never expires while the job lives).
# KEYS: job hash, history zset, active set, job events stream[, bundle, bundle's live-job set]
# ARGV: job id, submitted ms, node, events maxlen, event data (JSON), then field/value pairs
# Returns 1; an error (nothing written) when the job id is taken.
CREATE_JOB = _ARGS + """
local err = check_numbers(2, 4) or check_pairs(6)
if err then return err end
if #KEYS ~= 4 and #KEYS ~= 6 then
  return redis.error_reply('create_job: expected 4 keys, or 6 with a bundle')
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.error_reply('create_job: job ' .. ARGV[1] .. ' exists already')
end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
for _, etype in ipairs({'job_pending', 'job_validated'}) do
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', 'type', etype, 'node', ARGV[3], 'epoch', '',
    'data', ARGV[5])
end
if #KEYS == 6 then
  redis.call('SADD', KEYS[6], ARGV[1])
  redis.call('PERSIST', KEYS[5])
end
return 1
"""

# KEYS: job hash, job events stream, active set, agents hash, runs hash, attempts hash,
#       job lease epoch counter, history zset, expiry zset[, bundle, bundle's live-job set]
# ARGV: job id, node, reason, events maxlen, retention ms
# Returns {1, previous status}, or {0, status} when the job is unknown or already terminal.
# Pending, running and paused jobs can be cancelled; the job's keys expire after the retention.
CANCEL_JOB = _NOW_MS + _TERMINAL + _ARGS + _RETAIN + """
local err = check_numbers(4, 5)
if err then return err end
if #KEYS ~= 9 and #KEYS ~= 11 then
  return redis.error_reply('cancel_job: expected 9 keys, or 11 with a bundle')
end
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {0, 'unknown'} end
if is_terminal(status) then
  return {0, status}
end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'updated_ms', now_ms(), 'error', ARGV[3])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'type', 'job_cancelled', 'node', ARGV[2],
  'epoch', '', 'data', cjson.encode({reason = ARGV[3], previous = status}))
retain(ARGV[1], ARGV[5], {KEYS[1], KEYS[2], KEYS[4], KEYS[5], KEYS[6], KEYS[7]}, KEYS[8], KEYS[9], KEYS[10],
  KEYS[11])
return {1, status}
"""

# Pause or resume a job: running -> paused (event job_paused), paused -> running (job_resumed).
# While paused the coordinator dispatches nothing (job_write refuses a dispatch), claim_starts
# refuses new starts and store_results still accepts the runs already going.
# KEYS: job hash, job events stream ; ARGV: 'pause' | 'resume', node, events maxlen, reason
# Returns {1, previous status}, or {0, status} when the job is unknown or not in the state the
# change starts from.
PAUSE_JOB = _NOW_MS + _ARGS + """
local err = check_numbers(3)
if err then return err end
local from, to, ev = 'running', 'paused', 'job_paused'
if ARGV[1] == 'resume' then
  from, to, ev = 'paused', 'running', 'job_resumed'
elseif ARGV[1] ~= 'pause' then
  return redis.error_reply('pause_job: first argument must be pause or resume')
end
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {0, 'unknown'} end
if status ~= from then return {0, status} end
redis.call('HSET', KEYS[1], 'status', to, 'updated_ms', now_ms())
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'type', ev, 'node', ARGV[2], 'epoch', '',
  'data', cjson.encode({reason = ARGV[4]}))
return {1, status}
"""

# Delete a terminal job now (mn jobs prune). KEYS: job hash, agents, events, runs, attempts,
# job lease epoch counter, history zset, expiry zset[, bundle, bundle's live-job set]; ARGV: job id, retention ms (for
# the bundle). Returns {1, status}, or {0, status} when the job is unknown or not terminal.
PRUNE_JOB = _NOW_MS + _TERMINAL + _ARGS + _RETAIN + """
local err = check_numbers(2)
if err then return err end
if #KEYS ~= 8 and #KEYS ~= 10 then
  return redis.error_reply('prune_job: expected 8 keys, or 10 with a bundle')
end
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {0, 'unknown'} end
if not is_terminal(status) then return {0, status} end
retain(ARGV[1], ARGV[2], {}, KEYS[7], KEYS[8], KEYS[9], KEYS[10])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
redis.call('ZREM', KEYS[7], ARGV[1])
redis.call('ZREM', KEYS[8], ARGV[1])
return {1, status}
"""

# The leader's sweep of the job indexes, so they do not keep the ids of jobs whose keys expired
# after the last terminal write (`retain` trims only when another job ends). KEYS: history zset
# {ns}:jobs, expiry zset {ns}:jobs:expiry; ARGV: max ids per call. Returns how many it dropped.
TRIM_JOB_INDEX = _NOW_MS + _ARGS + """
local err = check_numbers(1)
if err then return err end
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[1]))
if #gone > 0 then
  redis.call('ZREM', KEYS[1], unpack(gone))
  redis.call('ZREM', KEYS[2], unpack(gone))
end
return #gone
"""
