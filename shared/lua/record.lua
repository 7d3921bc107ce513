-- Library: write `field` into `hash` once; only the first write appends its event. The caller
-- knows the run is there (its events stream, which expires with it, then is too); the hash
-- gets its TTL here, as the first write may have made it.
local function record(hash, events, field, value, ttl, event)
  if redis.call('HSETNX', hash, field, value) == 0 then return 0 end
  redis.call('EXPIRE', hash, ttl)
  redis.call('XADD', events, '*', 'event', event)
  return 1
end
