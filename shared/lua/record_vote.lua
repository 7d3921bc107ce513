-- Store a vote once, finishing it, with its event, unless the run is gone. Its call is billed
-- with its round (`bill_round`, by the step that closes the round, from the `usage` in its
-- JSON), or here at once: when ARGV[4] is '1' (a run with a budget, which must see each call)
-- or the vote is not stored (a second call for a vote stored already, or one never planned).
-- A new vote that does not close its round decides its issue early here when the votes in
-- allow it (`decide_early`), writing `decided/{issue}` with its `issue_decided` event.
-- KEYS: rounds, events, run, and for a workflow's node run its workflow's hash. ARGV: slot,
-- vote JSON, event JSON, bill now ('1'/'0'), the vote's issue, the most votes an issue may
-- draw; the early rule: its mode ('' for none: the caller decides), lead required and votes
-- planned, the decision event's JSON up to its outcome, and the outcome fields of decisions 1
-- to 3; then usage field/amount pairs. Returns whether it was new and the round it is to tally
-- (0: none); then, for the tally, the rounds hash and the run hash, or else, if it was new, the
-- issue's decision and its votes (HMGET of `decided/{issue}` and `vote/{issue}:{i}`).
--! include finish
--! include record
--! include decide_early
local r, new, closed = finish(KEYS[1], ARGV[1], ARGV[2])
if r < 0 then
  if redis.call('EXISTS', KEYS[3]) == 0 then return {0, 0} end
  r = 0  -- never planned: billed, not counted
end
if new == 1 then redis.call('XADD', KEYS[2], '*', 'event', ARGV[3]) end
if new == 0 or ARGV[4] == '1' then
  for i = 14, #ARGV, 2 do bill(KEYS[3], KEYS[4], ARGV[i], ARGV[i + 1]) end
end
if r > 0 then
  local rounds = redis.call('HGETALL', KEYS[1])
  if closed == 1 then bill_round(rounds, KEYS[3], KEYS[4], r) end
  return {new, r, rounds, redis.call('HGETALL', KEYS[3])}
end
if new == 0 then return {0, 0} end
local decided = 'decided/' .. ARGV[5]
local fields = {decided}
for i = 0, tonumber(ARGV[6]) - 1 do table.insert(fields, 'vote/' .. ARGV[5] .. ':' .. i) end
local read = redis.call('HMGET', KEYS[1], unpack(fields))
if ARGV[7] ~= '' and not read[1] then
  local s, f, e = 0, 0, 0
  for i = 2, #read do
    if read[i] and read[i] ~= '-' then
      local verdict = cjson.decode(read[i])['is_valid']
      if verdict == true then s = s + 1 elseif verdict == false then f = f + 1 else e = e + 1 end
    end
  end
  local d = decide_early(ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9]), s, f, e)
  if d > 0 then
    local event = ARGV[10] .. ARGV[10 + d] .. ',"passing":' .. s .. ',"failing":' .. f
      .. ',"errors":' .. e .. '}'
    record(KEYS[1], KEYS[2], decided, event, event)
    read[1] = event
  end
end
return {1, 0, read}
