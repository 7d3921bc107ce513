-- Finish a vote that casts nothing (skipped, or redelivered). KEYS: events, rounds.
-- ARGV: slot, ttl, event JSON (none: ''). Returns the round it is to tally (0: none).
--! include finish
if ARGV[3] ~= '' then
  redis.call('XADD', KEYS[1], '*', 'event', ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return finish(KEYS[2], ARGV[1], ARGV[2])
