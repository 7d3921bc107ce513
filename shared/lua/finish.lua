-- Library: finish a planned vote in the attempt's rounds hash (its fields: `Keys.rounds`). A
-- vote finishes once however often its job runs; the one that finishes a round's last vote
-- claims its tally, and gets the round back on every later finish.
local function finish(rounds, slot, ttl)
  local r = tonumber(redis.call('HGET', rounds, slot))
  if not r then return 0 end
  if r > 0 then
    redis.call('HSET', rounds, slot, -r)
    redis.call('EXPIRE', rounds, ttl)
    if redis.call('HINCRBY', rounds, 'out/' .. r, -1) > 0 then return 0 end
    redis.call('HSETNX', rounds, 'tally/' .. r, slot)
  end
  r = math.abs(r)
  if redis.call('HGET', rounds, 'tally/' .. r) == slot then return r end
  return 0
end
