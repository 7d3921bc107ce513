-- Plan a round's votes. KEYS: rounds, run. ARGV: round, ttl, then the round's slots. Plans
-- each slot once: a slot planned already keeps its round. The rounds hash expires when the
-- run does (or in ttl, for a run without one), never later: a vote that finds its slot
-- planned finds the run too. Returns the votes newly planned (-1: the run is gone).
local left = redis.call('PTTL', KEYS[2])
if left == -2 then return -1 end
local added = 0
for i = 3, #ARGV do
  added = added + redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[1])
end
if added > 0 then redis.call('HINCRBY', KEYS[1], 'out/' .. ARGV[1], added) end
if left > 0 then redis.call('PEXPIRE', KEYS[1], left) else redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return added
