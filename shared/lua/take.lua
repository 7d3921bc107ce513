-- Record the message a BRPOP took off the queue KEYS[1] (ARGV[3], '' for none) as unacked, pop
-- up to ARGV[1] more, no more than half of those waiting (rounded up), and record those too,
-- in the unacked hash KEYS[2] and its index KEYS[3] (score ARGV[2]) in kombu's own format: one
-- ZADD and one HSET for them all, in one atomic step, so that a worker that dies at any point
-- after it loses none of them (they come back after the visibility timeout). Returns the
-- messages popped here, and apart those that are no kombu message (which kombu's own read would
-- fail on too).
--
-- Half: the other half is left to the workers beside this one, each blocked in its own BRPOP,
-- so that a voting round's votes spread over them instead of all going to the first that wakes
-- (its CPU would then pace the whole round). A deep queue still goes in full batches.
local scores, fields = {}, {}
local function keep(message)
  local ok, decoded = pcall(cjson.decode, message)
  local properties = ok and type(decoded) == 'table' and decoded['properties']
  local info = type(properties) == 'table' and properties['delivery_info']
  local tag = type(info) == 'table' and properties['delivery_tag']
  if type(tag) ~= 'string' then return false end
  table.insert(scores, ARGV[2])
  table.insert(scores, tag)
  table.insert(fields, tag)
  table.insert(fields, '[' .. message .. ',' .. cjson.encode(info['exchange']) .. ','
    .. cjson.encode(info['routing_key']) .. ']')
  return true
end
if ARGV[3] ~= '' then keep(ARGV[3]) end
local taken, dropped = {}, {}
local limit = tonumber(ARGV[1])
if limit > 0 then limit = math.min(limit, math.ceil(redis.call('LLEN', KEYS[1]) / 2)) end
if limit > 0 then
  for _, message in ipairs(redis.call('RPOP', KEYS[1], limit) or {}) do
    table.insert(keep(message) and taken or dropped, message)
  end
end
if #fields > 0 then
  redis.call('ZADD', KEYS[3], unpack(scores))
  redis.call('HSET', KEYS[2], unpack(fields))
end
return {taken, dropped}
