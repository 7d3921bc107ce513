-- Library: a workflow's scheduling state (its nodes hash, fields `<n>:<field>`, see
-- `shared.workflows`). `wf_event` appends a workflow event; `node_done` ends node n with a
-- status: its dependents count down (those that reach 0 join the ready set) and, when no
-- node is left, `end` joins the ready set; `node_run_ended` counts a node run's end.
local function wf_event(events, ttl, fields)
  local t = redis.call('TIME')
  fields['ts'] = tonumber(t[1]) + tonumber(t[2]) / 1e6
  redis.call('XADD', events, '*', 'event', cjson.encode(fields))
  redis.call('EXPIRE', events, ttl)
end

local function node_done(nodes, ready, wf, events, n, status, ttl)
  redis.call('HSET', nodes, n .. ':state', status)
  local name = redis.call('HGET', nodes, n .. ':name')
  if status == 'SKIPPED' then
    wf_event(events, ttl, {type = 'node_skipped', node = name})
  else
    wf_event(events, ttl, {type = 'node_finished', node = name, status = status})
  end
  local deps = redis.call('HGET', nodes, n .. ':deps') or ''
  for d in string.gmatch(deps, '[^,]+') do
    if status ~= 'SUCCESSFUL' then redis.call('HINCRBY', nodes, d .. ':bad', 1) end
    if redis.call('HINCRBY', nodes, d .. ':pending', -1) == 0 then
      redis.call('SADD', ready, d)
      wf_event(events, ttl, {type = 'node_ready', node = redis.call('HGET', nodes, d .. ':name')})
    end
  end
  if redis.call('HINCRBY', wf, 'left', -1) <= 0 then redis.call('SADD', ready, 'end') end
  redis.call('HSET', wf, 'updated_at', redis.call('TIME')[1])
  redis.call('EXPIRE', ready, ttl)
end

local function node_run_ended(run, status, nodes, ready, wf, events, ttl)
  local n = string.match(run, '%.(%d+)%.%d+$')
  if not n then return end
  local ended = redis.call('HINCRBY', nodes, n .. ':ended', 1)
  if status ~= 'SUCCESSFUL' then redis.call('HINCRBY', nodes, n .. ':failed', 1) end
  local f = redis.call('HMGET', nodes, n .. ':items', n .. ':started', n .. ':failed',
    n .. ':map', n .. ':state')
  if f[5] ~= 'STARTED' then return end
  local items = tonumber(f[1] or '0')
  if ended >= items then
    if f[4] == '1' then status = (tonumber(f[3] or '0') > 0) and 'FAILED' or 'SUCCESSFUL' end
    node_done(nodes, ready, wf, events, n, status, ttl)
  elseif tonumber(f[2] or '0') < items then
    redis.call('SADD', ready, n)
    redis.call('EXPIRE', ready, ttl)
  end
end
