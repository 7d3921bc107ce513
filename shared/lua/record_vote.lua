-- Store a vote once, finishing it, with its event, and bill its call every time, unless the run
-- is gone. KEYS: rounds, events, run. ARGV: slot, vote JSON, event JSON, then usage field/amount
-- pairs. Returns whether it was new and the round it is to tally (0: none); then, if it was new
-- or is to tally, the rounds hash, and for the tally the run hash.
--! include finish
local r, new = finish(KEYS[1], ARGV[1], ARGV[2])
if r < 0 then
  if redis.call('EXISTS', KEYS[3]) == 0 then return {0, 0} end
  r = 0  -- never planned: billed, not counted
end
if new == 1 then redis.call('XADD', KEYS[2], '*', 'event', ARGV[3]) end
for i = 4, #ARGV, 2 do redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1]) end
if new == 0 and r == 0 then return {0, 0} end
local reply = {new, r, redis.call('HGETALL', KEYS[1])}
if r > 0 then reply[4] = redis.call('HGETALL', KEYS[3]) end
return reply
