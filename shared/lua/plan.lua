-- Plan a round's votes. KEYS: rounds, run. ARGV: round, ttl, the status and attempt the run must
-- be in ('' for any: `RunStore.start_voting` plans the first round in the round trip that moves
-- the run, only if it moved), then the round's slots. A round is planned once: planned again (a
-- redelivered job), it keeps its first plan. The rounds hash expires when the run does (or in
-- ttl, for a run without one), never later: a vote that finds its slot planned finds the run
-- too. Returns the votes planned (-1: the run is gone; -2: not in that status and attempt).
local left = redis.call('PTTL', KEYS[2])
if left == -2 then return -1 end
if ARGV[3] ~= '' then
  local cur = redis.call('HMGET', KEYS[2], 'status', 'attempt')
  if cur[1] ~= ARGV[3] or cur[2] ~= ARGV[4] then return -2 end
end
if redis.call('HEXISTS', KEYS[1], 'out/' .. ARGV[1]) == 1 then return 0 end
local fields = {'out/' .. ARGV[1], #ARGV - 4}
for i = 5, #ARGV do
  table.insert(fields, ARGV[i])
  table.insert(fields, ARGV[1])
end
redis.call('HSET', KEYS[1], unpack(fields))
if left > 0 then redis.call('PEXPIRE', KEYS[1], left) else redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return #ARGV - 4
