-- Raises a copy of a region's generation (a cluster bucket's fence) to at least ARGV[1]: sets it
-- when it is missing or lower, never lowers it, and gives it the TTL.
-- KEYS: the copy. ARGV: the generation, the TTL in ms.
-- Returns the copy's value afterwards.
local cur = tonumber(redis.call('GET', KEYS[1]) or '')
if cur == nil or cur < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('GET', KEYS[1])
