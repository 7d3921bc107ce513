-- Publish one task definition to the registry, noting a conflict.
-- KEYS[1]: the definitions hash (Keys.definitions), KEYS[2]: the conflicts hash
-- (Keys.definition_conflicts); both carry the hash tag {tasks}, so they share a slot.
-- ARGV: name, the definition's JSON, its content hash, the publishing worker, TTL (s), now.
-- A definition already there under the name with another hash, published by another worker,
-- is a conflict: recorded in KEYS[2] and returned as {1, its hash, its worker}; the new
-- definition replaces it either way (the newest deploy wins). Otherwise returns {0}.
local name, body, hash, worker, ttl, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local result = {0}
local old = redis.call('HGET', KEYS[1], name)
if old then
  local ok, decoded = pcall(cjson.decode, old)
  if ok and type(decoded) == 'table' and decoded['hash'] ~= hash
      and decoded['worker'] ~= worker then
    local seen = cjson.encode({name = name, hashes = {decoded['hash'], hash},
                               workers = {decoded['worker'], worker}, at = tonumber(now)})
    redis.call('HSET', KEYS[2], name, seen)
    redis.call('EXPIRE', KEYS[2], ttl)
    result = {1, tostring(decoded['hash']), tostring(decoded['worker'])}
  end
end
redis.call('HSET', KEYS[1], name, body)
redis.call('EXPIRE', KEYS[1], ttl)
return result
