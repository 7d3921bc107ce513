-- Write a field into a hash of the run's once, with its event, unless the hash is gone (writing
-- then would make keys of a run that expired). KEYS: hash (the run's, or an attempt's rounds),
-- events. ARGV: field, value, event JSON. Returns 1 if it was written.
--! include record
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return record(KEYS[1], KEYS[2], unpack(ARGV, 1, 3))
