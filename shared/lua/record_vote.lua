-- Finish a vote, store it once and bill its call every time, unless the run is gone.
-- KEYS: votes, events, run, rounds, decisions. ARGV: slot, vote JSON, ttl, event JSON, issue,
-- then usage field/amount pairs. Returns whether it was new, whether its issue is decided, the
-- round it is to tally (0: none) and, for that tally, the run, decisions and rounds hashes.
--! include record
--! include finish
local r = finish(KEYS[4], ARGV[1])
if r < 0 then
  if redis.call('EXISTS', KEYS[3]) == 0 then return {0, 0, 0} end
  r = 0
end
local new = record(KEYS[1], KEYS[2], unpack(ARGV, 1, 4))
for i = 6, #ARGV, 2 do redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1]) end
local decided = redis.call('HEXISTS', KEYS[5], ARGV[5])
if r == 0 then return {new, decided, r} end
local hashes = {}
for i, key in ipairs({KEYS[3], KEYS[5], KEYS[4]}) do hashes[i] = redis.call('HGETALL', key) end
return {new, decided, r, unpack(hashes)}
