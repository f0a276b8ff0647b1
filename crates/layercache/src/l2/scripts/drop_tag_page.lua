-- Removes one page of a tag's members: deletes the data keys and takes them out of the set in
-- one atomic step, so a member written again meanwhile keeps its membership (deleting the
-- whole set at the end would lose it).
-- KEYS: the tag set, then the members.
if #KEYS < 2 then return 0 end
redis.call('UNLINK', unpack(KEYS, 2))
return redis.call('SREM', KEYS[1], unpack(KEYS, 2))
