-- End a workflow with a final status unless it has ended. KEYS: workflow, events, done list.
-- ARGV: status, ttl, error ('' = none). Returns {1, hook} if it ended now, where hook is 1
-- when a workflow with a `callback` field recorded its webhook delivery (`webhook` = pending)
-- in this same step (shared/webhooks.py); else {0, 0}.
--! include wf_lib
if redis.call('HGET', KEYS[1], 'status') ~= 'RUNNING' then return {0, 0} end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'error', ARGV[3],
  'finished_at', tonumber(t[1]) + tonumber(t[2]) / 1e6)
wf_event(KEYS[2], ARGV[2], {type = 'workflow_finished', status = ARGV[1], error = ARGV[3]})
redis.call('RPUSH', KEYS[3], ARGV[1])
redis.call('EXPIRE', KEYS[3], ARGV[2])
local hook = 0
if redis.call('HEXISTS', KEYS[1], 'callback') == 1 then
  redis.call('HSET', KEYS[1], 'webhook', 'pending')
  hook = 1
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return {1, hook}
