-- Release an idempotency claim, only if it still names the run that took it.
-- KEYS: the claim. ARGV: the run id. Returns 1 if released.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
