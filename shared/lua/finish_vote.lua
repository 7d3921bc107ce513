-- Finish a vote that casts nothing (skipped, or redelivered). KEYS: rounds, events, run, and for
-- a workflow's node run its workflow's hash.
-- ARGV: slot, event JSON (none: ''). Returns the round it is to tally (0: none). The event is
-- appended once, by the job that finished the vote; one that closes its round bills it.
--! include finish
local r, new, closed = finish(KEYS[1], ARGV[1], '-')
if r < 0 then return 0 end
if new == 1 and ARGV[2] ~= '' then redis.call('XADD', KEYS[2], '*', 'event', ARGV[2]) end
if closed == 1 then bill_round(redis.call('HGETALL', KEYS[1]), KEYS[3], KEYS[4], r) end
return r
