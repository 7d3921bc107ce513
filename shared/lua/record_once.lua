-- Write a field into a hash once, with its event. KEYS: hash, events, run. ARGV: field, value,
-- ttl, event JSON. Returns 1 if it was written.
--! include record
return record(KEYS[1], KEYS[2], KEYS[3], unpack(ARGV, 1, 4))
