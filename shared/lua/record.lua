-- Library: write `field` into `hash` once; only the first write appends its event. The caller
-- knows the hash is there (and has its TTL), and with it the run's events stream.
local function record(hash, events, field, value, event)
  if redis.call('HSETNX', hash, field, value) == 0 then return 0 end
  redis.call('XADD', events, '*', 'event', event)
  return 1
end
