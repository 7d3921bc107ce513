-- End workflow node n without a run, if it is still WAITING: SKIPPED, or FAILED when its
-- inputs could not be resolved (its dependents count down as for any end). KEYS: nodes,
-- ready, workflow, events. ARGV: n, status, ttl, error. Returns 1 if it ended now.
--! include wf_lib
if redis.call('HGET', KEYS[1], ARGV[1] .. ':state') ~= 'WAITING' then return 0 end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], ARGV[1] .. ':error', ARGV[4]) end
node_done(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3])
return 1
