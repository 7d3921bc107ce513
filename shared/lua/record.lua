-- Library: write `field` into `hash` once; only the first write appends its event.
local function record(hash, events, run, field, value, ttl, event)
  if redis.call('HSETNX', hash, field, value) == 0 then return 0 end
  redis.call('XADD', events, '*', 'event', event)
  for _, key in ipairs({hash, events, run}) do redis.call('EXPIRE', key, ttl) end
  return 1
end
