-- Library: finish a planned vote in the attempt's rounds hash (its fields: `Keys.rounds`). A
-- vote finishes once however often its job runs; the one that finishes a round's last vote
-- claims its tally, and gets the round back on every later finish. Returns that round (0:
-- none), or -1 when the vote was never planned (or its attempt's keys are gone: the rounds
-- hash expires no later than the run, `plan.lua`); then the run may be gone too.
local function finish(rounds, slot)
  local r = tonumber(redis.call('HGET', rounds, slot))
  if not r then return -1 end
  if r > 0 then
    redis.call('HSET', rounds, slot, -r)
    if redis.call('HINCRBY', rounds, 'out/' .. r, -1) > 0 then return 0 end
    redis.call('HSETNX', rounds, 'tally/' .. r, slot)
  end
  r = math.abs(r)
  if redis.call('HGET', rounds, 'tally/' .. r) == slot then return r end
  return 0
end
