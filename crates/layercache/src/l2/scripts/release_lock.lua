-- Releases a lock only if it still holds our token.
-- KEYS: the lock. ARGV: the token.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
else
  return 0
end
