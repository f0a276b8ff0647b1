-- Extends a lock only if it still holds our token.
-- KEYS: the lock. ARGV: the token, the TTL in ms.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  return 0
end
