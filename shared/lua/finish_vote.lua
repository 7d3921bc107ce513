-- Finish a vote that casts nothing (skipped, or redelivered). KEYS: events, rounds, run.
-- ARGV: slot, event JSON (none: ''). Returns the round it is to tally (0: none). The event is
-- appended unless the run is gone.
--! include finish
local r = finish(KEYS[2], ARGV[1])
if r < 0 then
  if redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
  r = 0
end
if ARGV[2] ~= '' then redis.call('XADD', KEYS[1], '*', 'event', ARGV[2]) end
return r
