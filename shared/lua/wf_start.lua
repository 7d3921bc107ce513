-- Start runs of workflow node n, unless the workflow has ended or a step beside this one
-- started them first. KEYS: nodes, ready, workflow, events, inputs, then each run's key and
-- events key. ARGV: n, runs started so far as read ('' = the node's first start, from
-- WAITING), the node's number of runs, ttl, now, its inputs (JSON, '' = none), the number
-- of runs k, then per run its spec and its submitted event (JSON). A run that exists
-- already is left as it is. Returns k, -1 (lost the race) or -2 (the workflow has ended).
--! include wf_lib
if redis.call('HGET', KEYS[3], 'status') ~= 'RUNNING' then return -2 end
local n, ttl = ARGV[1], ARGV[4]
local st = redis.call('HMGET', KEYS[1], n .. ':state', n .. ':started')
if ARGV[2] == '' then
  if st[1] ~= 'WAITING' then return -1 end
  redis.call('HSET', KEYS[1], n .. ':state', 'STARTED', n .. ':items', ARGV[3],
    n .. ':started', 0, n .. ':ended', 0, n .. ':failed', 0)
  if ARGV[6] ~= '' then
    redis.call('HSET', KEYS[5], n, ARGV[6])
    redis.call('EXPIRE', KEYS[5], ttl)
  end
  wf_event(KEYS[4], ttl, {type = 'node_started', node = redis.call('HGET', KEYS[1], n .. ':name'),
    runs = tonumber(ARGV[3])})
  if tonumber(ARGV[3]) == 0 then
    node_done(KEYS[1], KEYS[2], KEYS[3], KEYS[4], n, 'SUCCESSFUL', ttl)
    return 0
  end
elseif st[1] ~= 'STARTED' or st[2] ~= ARGV[2] then
  return -1
end
local k = tonumber(ARGV[7])
for j = 1, k do
  local run, events = KEYS[4 + 2 * j], KEYS[5 + 2 * j]
  if redis.call('EXISTS', run) == 0 then
    redis.call('HSET', run, 'spec', ARGV[6 + 2 * j], 'status', 'PENDING', 'attempt', 0,
      'created_at', ARGV[5], 'updated_at', ARGV[5])
    redis.call('XADD', events, '*', 'event', ARGV[7 + 2 * j])
    redis.call('EXPIRE', run, ttl)
    redis.call('EXPIRE', events, ttl)
  end
end
redis.call('HINCRBY', KEYS[1], n .. ':started', k)
redis.call('EXPIRE', KEYS[1], ttl)
return k
