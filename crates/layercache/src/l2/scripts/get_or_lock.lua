-- Reads an entry and, when there is none, takes the load lock in the same step: a miss under
-- the distributed lock costs one round trip, not two.
-- KEYS: the data key, the lock key. ARGV: the lock token, the lock TTL in ms.
-- Returns {1, value} when the key holds a value, else {0, 1} when the lock was taken and
-- {0, 0} when someone else holds it.
local v = redis.call('GET', KEYS[1])
if v then return {1, v} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {0, 1} end
return {0, 0}
