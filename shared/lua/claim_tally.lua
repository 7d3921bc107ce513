-- Claim a round's tally. KEYS: rounds. ARGV: round, who asks, ttl. Returns who tallies the
-- round ('' while votes of it are still out); the first to ask once none is out gets it.
local out = redis.call('HGET', KEYS[1], 'out/' .. ARGV[1])
if tonumber(out or '0') > 0 then return '' end
if redis.call('HSETNX', KEYS[1], 'tally/' .. ARGV[1], ARGV[2]) == 1 and not out then
  redis.call('EXPIRE', KEYS[1], ARGV[3])  -- a round never planned: the hash may be new
end
return redis.call('HGET', KEYS[1], 'tally/' .. ARGV[1])
