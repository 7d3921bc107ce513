-- Claim a round's tally. KEYS: rounds. ARGV: round, who asks, ttl. Returns who tallies the
-- round ('' while votes of it are still out); the first to ask once none is out gets it.
if tonumber(redis.call('HGET', KEYS[1], 'out/' .. ARGV[1]) or '0') > 0 then return '' end
redis.call('HSETNX', KEYS[1], 'tally/' .. ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return redis.call('HGET', KEYS[1], 'tally/' .. ARGV[1])
