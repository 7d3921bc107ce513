-- Finish a vote that casts nothing (skipped, or redelivered). KEYS: rounds, events. ARGV: slot,
-- event JSON (none: ''). Returns the round it is to tally (0: none). The event is appended once,
-- by the job that finished the vote.
--! include finish
local r, new = finish(KEYS[1], ARGV[1], '-')
if r < 0 then return 0 end
if new == 1 and ARGV[2] ~= '' then redis.call('XADD', KEYS[2], '*', 'event', ARGV[2]) end
return r
