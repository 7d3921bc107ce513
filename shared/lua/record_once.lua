-- Write a field into a hash once, with its event, unless the run is gone (writing then would
-- make keys of a run that expired). KEYS: hash, events, run. ARGV: field, value, ttl, event
-- JSON. Returns 1 if it was written.
--! include record
if redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
return record(KEYS[1], KEYS[2], unpack(ARGV, 1, 4))
