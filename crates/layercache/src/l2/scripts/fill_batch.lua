-- Writes several entries of one region at once, each by the rules of fill.lua: `nx` only if
-- absent, `cas` only if the key still holds what was seen (same length and first bytes) or
-- nothing, `set` unconditionally; refused when the key holds a higher source version, or (a
-- tagged load's fill) when one of the `m` tag marks no longer holds the value the entry's load
-- read before it ran; all of them fenced on the region's generation when a fence is given;
-- every entry written is recorded in the `n` tag sets (each set's TTL raised to its longest
-- member's, never lowered). (fill.lua is the reference; a change to one is a change to both.)
--
-- KEYS: the generation key, then the data keys, then the `n` tag sets, then the `m` marks.
-- ARGV: the fence's generation (empty for none), then 6 + m per data key: the value, the TTL in
-- ms, the mode, the expected prefix, the expected length, the source version (8 bytes, or
-- empty for none), and the `m` marks' expected values (empty for none); last, `n` and `m`.
-- Returns, per data key: 1 (written), 0 (refused), -1 (fenced), -2 (older) or -3 (behind: fenced
-- because the generation key is missing or lower than the fence, see fill.lua).
local out = {}
local n = tonumber(ARGV[#ARGV - 1])
local m = tonumber(ARGV[#ARGV])
local last = #KEYS - n - m
local marks = {}
for j = 1, m do marks[j] = redis.call('GET', KEYS[last + n + j]) or '' end
if ARGV[1] ~= '' then
  local g = redis.call('GET', KEYS[1])
  if g ~= ARGV[1] then
    local cur = tonumber(g or '')
    local code = -1
    if cur == nil or cur < tonumber(ARGV[1]) then code = -3 end
    for i = 2, last do out[i - 1] = code end
    return out
  end
end
local longest = 0
for i = 2, last do
  local a = 2 + (i - 2) * (6 + m)
  local key, value, ttl, mode = KEYS[i], ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local prefix, len, version = ARGV[a + 3], ARGV[a + 4], ARGV[a + 5]
  local result = nil
  for j = 1, m do
    if marks[j] ~= ARGV[a + 5 + j] then result = 0 end
  end
  if result == nil and version ~= '' then
    local head = redis.pcall('GETRANGE', key, 0, 71)
    if type(head) == 'string' and #head == 72 and string.sub(head, 1, 4) == 'LCAC'
      and bit.band(string.byte(head, 7), 16) ~= 0 then
      local cur = string.sub(head, 65, 72)
      for j = 1, 8 do
        local x, y = string.byte(version, j), string.byte(cur, j)
        if x ~= y then
          if x < y then result = -2 end
          break
        end
      end
    end
  end
  if result == nil then
    local ok
    if mode == 'nx' then
      ok = redis.call('SET', key, value, 'PX', ttl, 'NX')
    elseif mode == 'cas' then
      local held = redis.call('STRLEN', key)
      if held == 0 or (held == tonumber(len) and redis.call('GETRANGE', key, 0, #prefix - 1) == prefix) then
        ok = redis.call('SET', key, value, 'PX', ttl)
      else
        ok = false
      end
    else
      ok = redis.call('SET', key, value, 'PX', ttl)
    end
    if ok then result = 1 else result = 0 end
  end
  if result == 1 then
    for t = last + 1, last + n do redis.call('SADD', KEYS[t], key) end
    local ms = tonumber(ttl)
    if ms > longest then longest = ms end
  end
  out[i - 1] = result
end
if longest > 0 then
  for t = last + 1, last + n do
    if redis.call('PTTL', KEYS[t]) < longest then redis.call('PEXPIRE', KEYS[t], longest) end
  end
end
return out
