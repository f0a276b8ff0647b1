-- Moves a region's generation to at least ARGV[1] and past its current value, atomically.
-- KEYS: the generation key. ARGV: the floor, the TTL in ms.
local cur = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local nxt = math.max(cur + 1, tonumber(ARGV[1]))
local s = string.format('%d', nxt)
redis.call('SET', KEYS[1], s, 'PX', ARGV[2])
return s
