-- Settle a webhook delivery by compare-and-set: `pending` -> ARGV[1] (`delivered` or
-- `failed`). KEYS: the hash that holds it (a run's or a workflow's). ARGV: outcome, ttl.
-- Returns 1 if it moved, 0 if it was not pending (settled already, or none).
if redis.call('HGET', KEYS[1], 'webhook') ~= 'pending' then return 0 end
redis.call('HSET', KEYS[1], 'webhook', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
