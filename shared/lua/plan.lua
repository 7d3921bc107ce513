-- Plan a round's votes. KEYS: rounds. ARGV: round, ttl, then the round's slots. Plans each
-- slot once: a slot planned already keeps its round.
for i = 3, #ARGV do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[1]) == 1 then
    redis.call('HINCRBY', KEYS[1], 'out/' .. ARGV[1], 1)
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
