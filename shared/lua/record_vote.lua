-- Store a vote once, finishing it, with its event, unless the run is gone. Its call is billed
-- with its round (`bill_round`, by the step that closes the round, from the `usage` in its
-- JSON), or here at once: when ARGV[4] is '1' (a run with a budget, which must see each call)
-- or the vote is not stored (a second call for a vote stored already, or one never planned).
-- KEYS: rounds, events, run, and for a workflow's node run its workflow's hash. ARGV: slot, vote JSON, event JSON, bill now ('1'/'0'), then usage
-- field/amount pairs. Returns whether it was new and the round it is to tally (0: none); then,
-- if it was new or is to tally, the rounds hash, and for the tally the run hash.
--! include finish
local r, new, closed = finish(KEYS[1], ARGV[1], ARGV[2])
if r < 0 then
  if redis.call('EXISTS', KEYS[3]) == 0 then return {0, 0} end
  r = 0  -- never planned: billed, not counted
end
if new == 1 then redis.call('XADD', KEYS[2], '*', 'event', ARGV[3]) end
if new == 0 or ARGV[4] == '1' then
  for i = 5, #ARGV, 2 do bill(KEYS[3], KEYS[4], ARGV[i], ARGV[i + 1]) end
end
if new == 0 and r == 0 then return {0, 0} end
local rounds = redis.call('HGETALL', KEYS[1])
if closed == 1 then bill_round(rounds, KEYS[3], KEYS[4], r) end
local reply = {new, r, rounds}
if r > 0 then reply[4] = redis.call('HGETALL', KEYS[3]) end
return reply
