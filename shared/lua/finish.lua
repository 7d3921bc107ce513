-- Library: finish a planned vote in the attempt's rounds hash (its fields: `Keys.rounds`) by
-- writing `value` into its `vote/` field: the vote's JSON, or '-' for a vote that cast nothing.
-- The first write finishes it and counts its round's `out/` down; later ones change nothing. The
-- one that counts a round down to zero claims its tally, and gets the round back on every later
-- finish. Returns that round (0: none) and whether this write finished the vote, or -1 when the
-- vote was never planned (or its attempt's keys are gone: the rounds hash expires no later than
-- the run, `plan.lua`); then the run may be gone too.
local function finish(rounds, slot, value)
  local r = tonumber(redis.call('HGET', rounds, slot))
  if not r then return -1, 0 end
  r = math.abs(r)
  local new = redis.call('HSETNX', rounds, 'vote/' .. slot, value)
  if new == 1 then
    if redis.call('HINCRBY', rounds, 'out/' .. r, -1) > 0 then return 0, 1 end
    if redis.call('HSETNX', rounds, 'tally/' .. r, slot) == 1 then return r, 1 end
  end
  if redis.call('HGET', rounds, 'tally/' .. r) == slot then return r, new end
  return 0, new
end
