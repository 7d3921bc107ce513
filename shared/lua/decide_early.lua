-- Library: the early decision of an issue, as `voting.decide_early` makes it (the two are kept
-- equal by tests/unit/test_voting.py): `mode` 'k' (K-ahead) or 't' (the others), `k` the lead
-- required, `planned` the votes launched for the issue, and its `s` passing, `f` failing and
-- `e` error votes in. Returns 0 (none yet), 1 passed, 2 failed, 3 failed: validator unavailable
-- (`voting.EARLY_DECISIONS`, in that order).
local function decide_early(mode, k, planned, s, f, e)
  local margin = s - f
  if mode == 'k' then
    if margin >= k then return 1 end
    if margin <= -k then return 2 end
    return 0
  end
  local pending = math.max(planned - s - f - e, 0)
  if margin - pending >= k then return 1 end
  if margin + pending < k then
    if margin + pending + e >= k then return 3 end
    return 2
  end
  return 0
end
