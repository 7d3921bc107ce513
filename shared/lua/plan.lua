-- Plan a round's votes. KEYS: rounds, run. ARGV: round, ttl, then the round's slots. A round is
-- planned once: planned again (a redelivered job), it keeps its first plan. The rounds hash
-- expires when the run does (or in ttl, for a run without one), never later: a vote that finds
-- its slot planned finds the run too. Returns the votes planned (-1: the run is gone).
local left = redis.call('PTTL', KEYS[2])
if left == -2 then return -1 end
if redis.call('HEXISTS', KEYS[1], 'out/' .. ARGV[1]) == 1 then return 0 end
local fields = {'out/' .. ARGV[1], #ARGV - 2}
for i = 3, #ARGV do
  table.insert(fields, ARGV[i])
  table.insert(fields, ARGV[1])
end
redis.call('HSET', KEYS[1], unpack(fields))
if left > 0 then redis.call('PEXPIRE', KEYS[1], left) else redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return #ARGV - 2
