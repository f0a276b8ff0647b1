-- Reads a region's generation, creating it (as the current Unix time in milliseconds, so a
-- counter that was lost never restarts below an older value) when missing, and refreshes its
-- TTL.
-- KEYS: the generation key. ARGV: the initial value, the TTL in ms.
local g = redis.call('GET', KEYS[1])
if not g then
  g = ARGV[1]
  redis.call('SET', KEYS[1], g)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return g
