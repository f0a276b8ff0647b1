-- Removes up to ARGV[1] members of one bucket's share of a tag (a cluster bucket's tag set):
-- takes them out of the set and deletes their data keys, which live in the set's slot, in one
-- atomic step (a member written again afterwards joins the set again).
-- KEYS: the bucket's tag set. ARGV: how many members at most.
-- Returns how many members it removed, and how many are left.
local members = redis.call('SPOP', KEYS[1], ARGV[1])
if #members > 0 then redis.call('UNLINK', unpack(members)) end
return {#members, redis.call('SCARD', KEYS[1])}
