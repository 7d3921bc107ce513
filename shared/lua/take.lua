-- Pop up to ARGV[1] messages off the queue KEYS[1], and no more than half of those waiting
-- (rounded up), and record each in the unacked hash KEYS[2] and index KEYS[3] (score ARGV[2]),
-- in kombu's own format, all in one atomic step: a worker that dies at any point loses none of
-- them (they come back after the visibility timeout). Returns them, and apart those that are no
-- kombu message (which kombu's own read would fail on too).
--
-- Half: the other half is left to the workers beside this one, each blocked in its own BRPOP,
-- so that a voting round's votes spread over them instead of all going to the first that wakes
-- (its CPU would then pace the whole round). A deep queue still goes in full batches.
local function envelope(message)
  local ok, decoded = pcall(cjson.decode, message)
  local properties = ok and type(decoded) == 'table' and decoded['properties']
  local info = type(properties) == 'table' and properties['delivery_info']
  if type(info) == 'table' and type(properties['delivery_tag']) == 'string' then
    return properties['delivery_tag'], info
  end
end
local taken, dropped = {}, {}
local limit = math.min(tonumber(ARGV[1]), math.ceil(redis.call('LLEN', KEYS[1]) / 2))
for _ = 1, limit do
  local message = redis.call('RPOP', KEYS[1])
  if not message then break end
  local tag, info = envelope(message)
  if tag then
    redis.call('ZADD', KEYS[3], ARGV[2], tag)
    redis.call('HSET', KEYS[2], tag, '[' .. message .. ',' .. cjson.encode(info['exchange'])
      .. ',' .. cjson.encode(info['routing_key']) .. ']')
    table.insert(taken, message)
  else
    table.insert(dropped, message)
  end
end
return {taken, dropped}
