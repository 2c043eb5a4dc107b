"""The Redis layer's Lua scripts: every multi-command step it takes, atomic in Redis.

Each script checks the keys it touches, so garbage of any Redis type in the
layer's namespace is repaired where it is met instead of failing the command
(see "Bookkeeping heals itself" in ``flags.cache.redis``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Scripts"]

# The epoch, healed and bumped. KEYS[1]: the epoch hash. ARGV[1]: a marker to bump for
# ('' only reads), ARGV[2]: the caller's epoch (the floor). Returns {epoch, state}: state
# 0 when the hash was sound, 1 when it held garbage (wrong type, `n` missing or not a
# non-negative integer) and 2 when it did not exist. In both cases the hash is started
# afresh at the Redis server's clock in microseconds (above every counted epoch, which
# grows by one per bump) and above the caller's epoch: strictly newer than any entry
# written before, so none of them is served again.
_EPOCH = """
local key = KEYS[1]
local state = 0
local cur = nil
local kind = redis.call('TYPE', key)['ok']
if kind == 'hash' then
  local raw = redis.call('HGET', key, 'n')
  cur = tonumber(raw)
  if not raw or not cur or cur < 0 or cur ~= math.floor(cur) or cur >= 2^53 then
    cur = nil
    state = 1
  end
elseif kind == 'none' then
  state = 2
else
  state = 1
end
local floor = tonumber(ARGV[2])
if cur == nil then
  local now = redis.call('TIME')
  cur = tonumber(now[1]) * 1000000 + tonumber(now[2])
  if floor + 1 > cur then cur = floor + 1 end
  redis.call('DEL', key)
elseif floor > cur then
  cur = floor
end
if ARGV[1] ~= '' and redis.call('HSETNX', key, 'm:' .. ARGV[1], '1') == 1 then
  cur = cur + 1
end
redis.call('HSET', key, 'n', string.format('%.0f', cur))
return {cur, state}
"""
# Delete the key if it still holds the bytes we judged bad (a fresh write survives),
# or if it holds anything but a string (garbage of another type in an entry's place).
_DISCARD = """
if redis.call('TYPE', KEYS[1])['ok'] ~= 'string' then return redis.call('DEL', KEYS[1]) end
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Write the entry unless the key was invalidated a moment ago (its tombstone lives). A
# tombstone is the string '1' with an expiry of at most ARGV[3] ms; anything else in its
# place is garbage: deleted, the write refused this once, and 2 returned (corruption).
_WRITE = """
local tomb = redis.call('TYPE', KEYS[2])['ok']
if tomb ~= 'none' then
  if tomb == 'string' and redis.call('GET', KEYS[2]) == '1' then
    local ttl = redis.call('PTTL', KEYS[2])
    if ttl >= 0 and ttl <= tonumber(ARGV[3]) then return 0 end
  end
  redis.call('DEL', KEYS[2])
  return 2
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
# Invalidate: delete the entry and keep writers of values loaded before off it for a while.
_INVALIDATE = """
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
return 1
"""


class Scripts:
    """The layer's Lua scripts, registered on one client."""

    __slots__ = ("discard", "epoch", "invalidate", "write")

    def __init__(self, client: Any) -> None:
        self.epoch = client.register_script(_EPOCH)
        self.discard = client.register_script(_DISCARD)
        self.write = client.register_script(_WRITE)
        self.invalidate = client.register_script(_INVALIDATE)
