-- Writes an entry: `nx` only if absent; `cas` only if the key still holds what the load saw
-- (a tombstone, a stale or corrupt value: same length, same first bytes -- the envelope header,
-- whose CRC and creation time tell entries apart, and whose nonce tells tombstones apart) or
-- nothing at all (what it saw expired meanwhile: as for `nx`, the fetch's time bound keeps a
-- newer entry from having expired too), so a load that began before a concurrent write or
-- invalidation never overwrites it; `set` unconditionally. A load (which passes marks;
-- `insert` does not) is also refused when one of its tags was invalidated since it began: each
-- tag's mark must still be what the load read before it ran. A write with a fence (`insert`,
-- `invalidate`) lands only if the region's generation is still the one its key was made for: a
-- writer that has not yet heard of an `invalidate_all` or `clear` must not write into the
-- abandoned key space, where nobody would see it, while an older value sits in the new one.
-- Then records the key in each of its tags' sets (raising a set's TTL to its longest member's,
-- never lowering it).
--
-- A write with a source version (`insert_versioned`) is refused when the key holds an envelope
-- with a higher one (flag bit 4, the big-endian version right after the 64-byte header,
-- compared byte by byte): concurrent writers converge on the newest value whatever order their
-- writes arrive in.
--
-- KEYS: the data key, the `n` tag sets, the `m` tag marks (`m` is `n` or 0), then with a fence
-- the generation key.
-- ARGV: the value, the TTL in ms, the mode, the expected prefix, the expected length, `n`, `m`,
-- the fence's generation (empty for none), the source version (8 bytes, or empty for none),
-- then the `m` expected marks (empty for none).
-- Returns 1 (written), 0 (refused: the key or a mark changed), -1 (fenced: the generation
-- moved), -2 (older: the key holds a higher source version) or -3 (behind: the generation key
-- is missing or holds a lower generation than the fence -- on one server the region's generation
-- was lost, on a cluster the bucket's copy has not caught up; fenced too until it has).
local n = tonumber(ARGV[6])
local m = tonumber(ARGV[7])
if ARGV[8] ~= '' then
  local g = redis.call('GET', KEYS[2 + n + m])
  if g ~= ARGV[8] then
    local cur = tonumber(g or '')
    if cur == nil or cur < tonumber(ARGV[8]) then return -3 end
    return -1
  end
end
for i = 1, m do
  if (redis.call('GET', KEYS[1 + n + i]) or '') ~= ARGV[9 + i] then return 0 end
end
if ARGV[9] ~= '' then
  local head = redis.pcall('GETRANGE', KEYS[1], 0, 71)
  if type(head) == 'string' and #head == 72 and string.sub(head, 1, 4) == 'LCAC'
    and bit.band(string.byte(head, 7), 16) ~= 0 then
    local cur = string.sub(head, 65, 72)
    for i = 1, 8 do
      local a, b = string.byte(ARGV[9], i), string.byte(cur, i)
      if a ~= b then
        if a < b then return -2 end
        break
      end
    end
  end
end
local ok
if ARGV[3] == 'nx' then
  ok = redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX')
elseif ARGV[3] == 'cas' then
  local len = redis.call('STRLEN', KEYS[1])
  if len == 0 or (len == tonumber(ARGV[5])
    and redis.call('GETRANGE', KEYS[1], 0, #ARGV[4] - 1) == ARGV[4]) then
    ok = redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  else
    ok = false
  end
else
  ok = redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
if not ok then return 0 end
local ttl = tonumber(ARGV[2])
for i = 2, n + 1 do
  redis.call('SADD', KEYS[i], KEYS[1])
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
return 1
