-- Takes a lock where nobody holds it, with the next fencing token of its name.
-- KEYS: the lock, its fence counter (same slot). ARGV: the token, the lock's TTL in ms, the
-- counter's TTL in ms.
-- The fencing token is above the last one handed out and at least the server's clock in
-- microseconds: it keeps rising when the counter is lost (expired, FLUSHALL, a restart).
-- Returns the fencing token, or 0 when the lock is held.
local t = redis.call('TIME')
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 0
end
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
local fence = math.max(last + 1, now)
redis.call('SET', KEYS[2], string.format('%.0f', fence), 'PX', ARGV[3])
return fence
