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

ALL = {
    "acquire": ACQUIRE,
    "renew_all": RENEW_ALL,
    "release": RELEASE,
    "fenced_hset": FENCED_HSET,
    "fenced_xadd": FENCED_XADD,
    "register": REGISTER,
    "unregister": UNREGISTER,
}
