-- Deletes KEYS[1] if it holds another Redis type than a string (a key layercache did not
-- write): what a coalesced read (an MGET) saw as nothing, and a fill "if absent" could not
-- replace. Checked and deleted in one step, so a value written meanwhile is never deleted.
-- Returns 1 when it deleted the key, else 0.
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'string' and t ~= 'none' then
  return redis.call('DEL', KEYS[1])
end
return 0
