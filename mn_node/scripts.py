"""Every Lua script of the project, in one place (DESIGN §5). Loaded once, called by SHA.

Tokens are ``node|incarnation|epoch``. A lease key holds the token of its current holder;
``{ns}:epoch:<lease>`` is INCRed on every grant, so epochs only grow. Fenced writes carry
the writer's token and are refused unless it equals the lease's current value; objects that
hold fenced state also keep ``_fence`` (the highest epoch written) and refuse lower epochs.
"""

from __future__ import annotations

# KEYS: lease, epoch counter, events stream
# ARGV: owner prefix (node|incarnation), ttl ms, event type ('' = none), stream maxlen, lease name
ACQUIRE = """
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

# KEYS: lease keys; ARGV[1]: ttl ms, ARGV[2..]: the token held for each key
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
RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
if ARGV[2] ~= '' then
  local node, inc, epoch = string.match(ARGV[1], '^([^|]*)|([^|]*)|(%d+)$')
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*',
    'type', ARGV[2], 'node', node, 'epoch', epoch, 'lease', ARGV[4], 'data', ARGV[5])
end
return 1
"""

# KEYS: lease, hash; ARGV: token, epoch, field1, value1, ...
# Returns 1, or an error reply 'FENCED <why>' (raised as a ResponseError in Python).
FENCED_HSET = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('FENCED token not current')
end
local fence = tonumber(redis.call('HGET', KEYS[2], '_fence') or '0')
local epoch = tonumber(ARGV[2])
if epoch < fence then
  return redis.error_reply('FENCED epoch ' .. epoch .. ' below ' .. fence)
end
redis.call('HSET', KEYS[2], '_fence', epoch)
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
return 1
"""

# KEYS: lease, stream; ARGV: token, epoch, maxlen, field1, value1, ...
# A fenced append that also records the epoch; refuses epochs lower than the last appended.
FENCED_XADD = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('FENCED token not current')
end
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #last > 0 then
  local f = last[1][2]
  for i = 1, #f, 2 do
    if f[i] == 'epoch' and tonumber(f[i + 1]) > tonumber(ARGV[2]) then
      return redis.error_reply('FENCED epoch ' .. ARGV[2] .. ' below ' .. f[i + 1])
    end
  end
end
local args = {'XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'epoch', ARGV[2]}
for i = 4, #ARGV do
  args[#args + 1] = ARGV[i]
end
return redis.call(unpack(args))
"""

# Node registration. KEYS: node hash; ARGV: incarnation, ttl ms, field1, value1, ...
# Writes only if the hash is absent or belongs to this incarnation; stamps refreshed_ms
# with the server's clock. Returns 1, or {0, holder incarnation} when held by another.
REGISTER = """
local holder = redis.call('HGET', KEYS[1], 'incarnation')
if holder and holder ~= ARGV[1] and ARGV[3] ~= 'force' then
  return {0, holder}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local start = 3
if ARGV[3] == 'force' then
  redis.call('DEL', KEYS[1])
  start = 4
end
redis.call('HSET', KEYS[1], 'incarnation', ARGV[1], 'refreshed_ms', now)
for i = start, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
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
# Agent states live in {ns}:job:<id>:agents as JSON {status, attempt, node, output, error}.

# Coordinator write, fenced. KEYS: lease, job hash, agents hash, job events stream, active set
# ARGV: token, epoch, job fields json (object), agent states json (object id -> state json),
#       events json (list of [type, data json]), node, terminal ('1' removes from active set)
JOB_WRITE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('FENCED token not current')
end
local epoch = tonumber(ARGV[2])
local fence = tonumber(redis.call('HGET', KEYS[2], '_fence') or '0')
if epoch < fence then
  return redis.error_reply('FENCED epoch ' .. epoch .. ' below ' .. fence)
end
local status = redis.call('HGET', KEYS[2], 'status')
if status == 'completed' or status == 'failed' or status == 'cancelled' then
  return redis.error_reply('FENCED job is already ' .. status)
end
redis.call('HSET', KEYS[2], '_fence', epoch, 'owner', ARGV[6], 'epoch', epoch)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[2], 'updated_ms', now)
for k, v in pairs(cjson.decode(ARGV[3])) do
  redis.call('HSET', KEYS[2], k, tostring(v))
end
local done = 0
for id, st in pairs(cjson.decode(ARGV[4])) do
  local old = redis.call('HGET', KEYS[3], id)
  if old and cjson.decode(old)['status'] == 'completed' then
    return redis.error_reply('FENCED agent ' .. id .. ' already completed')
  end
  if cjson.decode(st)['status'] == 'completed' then done = done + 1 end
  redis.call('HSET', KEYS[3], id, st)
end
if done > 0 then redis.call('HINCRBY', KEYS[2], 'agents_done', done) end
for _, ev in ipairs(cjson.decode(ARGV[5])) do
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', 10000, '*', 'type', ev[1], 'node', ARGV[6],
    'epoch', epoch, 'data', ev[2])
end
if ARGV[7] == '1' then redis.call('SREM', KEYS[5], string.match(KEYS[2], ':job:(.*)$')) end
return 1
"""

# Shared head of the executor-side scripts: go on only while the job is running and ARGV[2]
# is the agent's current dispatched attempt (KEYS[1] job hash, KEYS[2] agents hash, ARGV[1]
# agent id); leaves the decoded agent state in `st`.
_CURRENT_ATTEMPT = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'running' then
  return {0, 'job is ' .. tostring(status)}
end
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if not raw then return {0, 'unknown agent'} end
local st = cjson.decode(raw)
if st['status'] ~= 'dispatched' or tonumber(st['attempt']) ~= tonumber(ARGV[2]) then
  return {0, 'attempt ' .. ARGV[2] .. ' is not current (agent is ' .. tostring(st['status']) ..
    ' attempt ' .. tostring(st['attempt']) .. ')'}
end
"""

# An executor's result, written by the node that ran it before anyone is told, and only if
# its attempt is still the current one and the job is still running.
# KEYS: job hash, agents hash, runs hash ; ARGV: agent id, attempt, node, output json,
#       'completed' | 'failed', error text
STORE_RESULT = _CURRENT_ATTEMPT + """
local t = redis.call('TIME')
st['finished_ms'] = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
st['node'] = ARGV[3]
if ARGV[5] == 'completed' then
  st['status'] = 'completed'
  st['output'] = ARGV[4]
  redis.call('HINCRBY', KEYS[1], 'agents_done', 1)
  redis.call('HINCRBY', KEYS[1], 'node:' .. ARGV[3], 1)
else
  st['status'] = 'failed'
  st['error'] = ARGV[6]
end
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(st))
redis.call('HSET', KEYS[1], 'updated_ms', st['finished_ms'])
return {1, st['status']}
"""

# KEYS: job hash, agents hash, runs hash ; ARGV: agent id, attempt
# Counts a start in the runs hash only while the attempt is the dispatched one of a running job:
# a request that arrives late (it sat in a paused node's socket buffer while the coordinator
# replayed the agent elsewhere) is refused instead of re-running a completed executor.
CLAIM_START = _CURRENT_ATTEMPT + """
return {1, redis.call('HINCRBY', KEYS[3], ARGV[1], 1)}
"""

# KEYS: job hash, job events stream, active set ; ARGV: job id, node, reason
CANCEL_JOB = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {0, 'unknown'} end
if status == 'completed' or status == 'failed' or status == 'cancelled' then
  return {0, status}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'updated_ms', now, 'error', ARGV[3])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', 10000, '*', 'type', 'job_cancelled', 'node', ARGV[2],
  'epoch', '', 'data', cjson.encode({reason = ARGV[3], previous = status}))
return {1, status}
"""

ALL = {
    "acquire": ACQUIRE,
    "renew_all": RENEW_ALL,
    "release": RELEASE,
    "fenced_hset": FENCED_HSET,
    "fenced_xadd": FENCED_XADD,
    "register": REGISTER,
    "unregister": UNREGISTER,
    "job_write": JOB_WRITE,
    "store_result": STORE_RESULT,
    "claim_start": CLAIM_START,
    "cancel_job": CANCEL_JOB,
}
