-- One rate-limit check (see `rate.rs`, which does the same arithmetic for the in-memory store).
-- KEYS: the limiter's key for the caller's key, and its `:1` (the sliding window's odd
-- windows; same slot). ARGV: the algorithm (g: token bucket / GCRA, f: fixed window,
-- s: sliding window), the limit per window, the window in µs, the bucket's capacity, n.
-- Returns {allowed (0/1), remaining, retry after in µs (0 when allowed)}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local alg = ARGV[1]
local limit = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local burst = tonumber(ARGV[4])
local n = tonumber(ARGV[5])

local function ms(us)
  return string.format('%.0f', math.max(1, math.ceil(us / 1000)))
end
local function denied(remaining, retry)
  return {0, math.max(0, math.floor(remaining)), math.max(1, math.ceil(retry))}
end

if alg == 'g' then
  local interval = window / limit
  local tat = tonumber(redis.call('GET', KEYS[1]) or '') or 0
  if tat < now then tat = now end
  local new_tat = tat + n * interval
  local allow_at = new_tat - burst * interval
  if allow_at > now then
    return denied((now + burst * interval - tat) / interval, allow_at - now)
  end
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ms(new_tat - now))
  return {1, math.max(0, math.floor((now + burst * interval - new_tat) / interval)), 0}
elseif alg == 'f' then
  -- `{window start}:{count}`; a window ends `window` after its start.
  local start, count = now, 0
  local v = redis.call('GET', KEYS[1])
  if v then
    local s, c = string.match(v, '^(%d+):(%d+)$')
    if s and now < tonumber(s) + window then
      start, count = tonumber(s), tonumber(c)
    end
  end
  if count + n > limit then
    return denied(limit - count, start + window - now)
  end
  local value = string.format('%.0f:%.0f', start, count + n)
  redis.call('SET', KEYS[1], value, 'PX', ms(start + window - now))
  return {1, math.max(0, math.floor(limit - count - n)), 0}
else
  -- `{window index}:{count}` under KEYS[1] for even windows, KEYS[2] for odd ones.
  local idx = math.floor(now / window)
  local cur_key, prev_key = KEYS[1], KEYS[2]
  if idx % 2 == 1 then cur_key, prev_key = KEYS[2], KEYS[1] end
  local function count(key, want)
    local v = redis.call('GET', key)
    if not v then return 0 end
    local i, c = string.match(v, '^(%d+):(%d+)$')
    if i and tonumber(i) == want then return tonumber(c) end
    return 0
  end
  local cur = count(cur_key, idx)
  local prev = count(prev_key, idx - 1)
  local into = now - idx * window
  local estimate = prev * (window - into) / window + cur
  if estimate + n > limit then
    local retry
    if cur + n <= limit and prev > 0 then
      retry = (window - into) - (limit - n - cur) * window / prev
    else
      retry = (window - into) + math.max(0, window * (1 - (limit - n) / cur))
    end
    return denied(limit - estimate, retry)
  end
  local value = string.format('%.0f:%.0f', idx, cur + n)
  redis.call('SET', cur_key, value, 'PX', ms(2 * window))
  return {1, math.max(0, math.floor(limit - estimate - n)), 0}
end
