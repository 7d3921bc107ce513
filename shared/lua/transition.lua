-- Compare-and-set a run's status, appending its events and setting fields only if it moves.
-- A live run's keys have the TTL they were made with (its deadline and the result TTL); a move
-- to a terminal status sets the result TTL (ARGV ttl) on them.
-- KEYS: run, events, and for a terminal status the done list; for the end of a workflow's
-- node run also the workflow's nodes hash, ready set, hash and events (`wf_lib`), all on the
-- run's slot. ARGV: allowed statuses (comma list), expected attempt ('' = any), new status,
-- ttl, number of events n, the n events (JSON), then field/value pairs to set.
-- Returns {moved (0/1), status, attempt}, and when it moved to a terminal status, the run's
-- creation time and whether it recorded a webhook delivery after them: a run with a
-- `callback` field gets `webhook` = pending in this same step (shared/webhooks.py).
--! include wf_lib
local cur = redis.call('HMGET', KEYS[1], 'status', 'attempt', 'callback', 'created_at')
if not cur[1] then return {0, '', ''} end
local allowed = false
for s in string.gmatch(ARGV[1], '[^,]+') do
  if s == cur[1] then allowed = true end
end
if not allowed or (ARGV[2] ~= '' and ARGV[2] ~= cur[2]) then return {0, cur[1], cur[2]} end
local n = tonumber(ARGV[5])
redis.call('HSET', KEYS[1], 'status', ARGV[3], unpack(ARGV, 6 + n))
for i = 6, 5 + n do redis.call('XADD', KEYS[2], '*', 'event', ARGV[i]) end
if KEYS[3] then
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[4])
  redis.call('RPUSH', KEYS[3], ARGV[3])
  redis.call('EXPIRE', KEYS[3], ARGV[4])
  if KEYS[4] then node_run_ended(KEYS[1], ARGV[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], ARGV[4]) end
  local hook = 0
  if cur[3] then
    redis.call('HSET', KEYS[1], 'webhook', 'pending')
    hook = 1
  end
  return {1, ARGV[3], cur[2], cur[4], hook}
end
return {1, ARGV[3], cur[2]}
