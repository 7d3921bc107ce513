-- Library: finish a planned vote in the attempt's rounds hash (its fields: `Keys.rounds`) by
-- writing `value` into its `vote/` field: the vote's JSON, or '-' for a vote that cast nothing.
-- The first write finishes it and counts its round's `out/` down; later ones change nothing. The
-- one that counts a round down to zero closes it and claims its tally, and gets the round back
-- on every later finish. Returns that round (0: none), whether this write finished the vote and
-- whether it closed the round; or -1 when the vote was never planned (or its attempt's keys
-- are gone: the rounds hash expires no later than the run, `plan.lua`); then the run may be
-- gone too.
local function finish(rounds, slot, value)
  local r = tonumber(redis.call('HGET', rounds, slot))
  if not r then return -1, 0, 0 end
  r = math.abs(r)
  local new = redis.call('HSETNX', rounds, 'vote/' .. slot, value)
  if new == 1 then
    if redis.call('HINCRBY', rounds, 'out/' .. r, -1) > 0 then return 0, 1, 0 end
    if redis.call('HSETNX', rounds, 'tally/' .. r, slot) == 1 then return r, 1, 1 end
  end
  if redis.call('HGET', rounds, 'tally/' .. r) == slot then return r, new, 0 end
  return 0, new, 0
end

-- Library: add `amount` to the usage counter `counter` of the run, and of its workflow (nil for
-- a run of no workflow's; its hash is on the run's slot).
local function bill(run, workflow, counter, amount)
  redis.call('HINCRBY', run, counter, amount)
  if workflow then redis.call('HINCRBY', workflow, counter, amount) end
end

-- Library: bill round r's votes to the run (and its workflow), once, from the step that closed
-- the round: each vote's JSON carries its call's usage counters (`usage`: run-hash field ->
-- amount), added up into one HINCRBY per counter. `flat` is the rounds hash as HGETALL returns.
local function bill_round(flat, run, workflow, r)
  local fields, totals = {}, {}
  for i = 1, #flat, 2 do fields[flat[i]] = flat[i + 1] end
  for name, value in pairs(fields) do
    if name:sub(1, 5) == 'vote/' and value ~= '-'
        and math.abs(tonumber(fields[name:sub(6)]) or 0) == r then
      local usage = cjson.decode(value)['usage']
      if type(usage) == 'table' then
        for counter, n in pairs(usage) do totals[counter] = (totals[counter] or 0) + n end
      end
    end
  end
  for counter, n in pairs(totals) do bill(run, workflow, counter, n) end
end
