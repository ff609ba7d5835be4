"""Counting for rate limits and daily quotas: in Redis when a broker is configured (every API process shares the
counts), in this process otherwise.

Rate limits are token buckets: ``burst`` tokens, refilled at ``rate`` per second, one per request. Daily quotas
are counters per owner and UTC day that refuse an amount that would pass the limit (nothing is counted then).
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import Protocol

log = logging.getLogger(__name__)

# Atomic in Redis: refill from the elapsed time (Redis's own clock, the same for every API process), then take.
# Returns {allowed, seconds until a token is there}.
_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return {allowed, tostring(wait)}
"""

# Add ARGV[1] to the day's counter unless that passes ARGV[2]; returns {added, current}.
_CHARGE_LUA = """
local amount = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used + amount > limit then
  return {0, tostring(used)}
end
used = redis.call('INCRBY', KEYS[1], amount)
redis.call('EXPIRE', KEYS[1], 172800)
return {1, tostring(used)}
"""


def seconds_to_midnight() -> float:
    now = dt.datetime.now(dt.UTC)
    tomorrow = (now + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (tomorrow - now).total_seconds()


def _day() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%d")


class Counters(Protocol):
    async def take(self, bucket: str, rate: float, burst: int) -> float:
        """Take one token; 0 when there was one, else the seconds until there is."""

    def charge(self, quota: str, owner: str, amount: int, limit: int) -> tuple[bool, int]:
        """Count ``amount`` against today's ``quota`` of ``owner`` unless that passes ``limit``; (added, used)."""

    def used(self, quota: str, owner: str) -> int:
        """What ``owner`` has used of today's ``quota``."""

    def close(self) -> None: ...


class LocalCounters:
    """For one API process (the embedded default)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}
        self._daily: dict[tuple[str, str, str], int] = {}

    async def take(self, bucket: str, rate: float, burst: int) -> float:
        now = time.monotonic()
        with self._lock:
            tokens, ts = self._buckets.get(bucket, (float(burst), now))
            tokens = min(float(burst), tokens + (now - ts) * rate)
            if tokens >= 1:
                self._buckets[bucket] = (tokens - 1, now)
                return 0.0
            self._buckets[bucket] = (tokens, now)
            return (1 - tokens) / rate

    def charge(self, quota: str, owner: str, amount: int, limit: int) -> tuple[bool, int]:
        key = (quota, owner, _day())
        with self._lock:
            used = self._daily.get(key, 0)
            if used + amount > limit:
                return False, used
            # Yesterday's counters are of no use any more.
            self._daily = {k: v for k, v in self._daily.items() if k[2] == key[2]}
            self._daily[key] = used + amount
            return True, used + amount

    def used(self, quota: str, owner: str) -> int:
        with self._lock:
            return self._daily.get((quota, owner, _day()), 0)

    def close(self) -> None:
        pass


class RedisCounters:
    """Shared by every API process on the same Redis. When Redis does not answer, a request is counted by this
    process alone (logged) rather than refused: the broker being down must not take the registry's reads down."""

    def __init__(self, url: str) -> None:
        import redis
        import redis.asyncio as aioredis

        self._async = aioredis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        self._sync = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._bucket_async = self._async.register_script(_BUCKET_LUA)
        self._charge = self._sync.register_script(_CHARGE_LUA)
        self._fallback = LocalCounters()

    async def take(self, bucket: str, rate: float, burst: int) -> float:
        try:
            allowed, wait = await self._bucket_async(keys=[f"lg:rate:{bucket}"], args=[rate, burst])
        except Exception as exc:  # any Redis failure: count locally instead
            log.warning("rate limit counted in-process, Redis failed: %s", exc)
            return await self._fallback.take(bucket, rate, burst)
        return 0.0 if int(allowed) else float(wait)

    def charge(self, quota: str, owner: str, amount: int, limit: int) -> tuple[bool, int]:
        try:
            added, used = self._charge(keys=[f"lg:quota:{quota}:{owner}:{_day()}"], args=[amount, limit])
        except Exception as exc:
            log.warning("quota counted in-process, Redis failed: %s", exc)
            return self._fallback.charge(quota, owner, amount, limit)
        return bool(int(added)), int(float(used))

    def used(self, quota: str, owner: str) -> int:
        try:
            value = self._sync.get(f"lg:quota:{quota}:{owner}:{_day()}")
        except Exception as exc:
            log.warning("quota read in-process, Redis failed: %s", exc)
            return self._fallback.used(quota, owner)
        return int(float(value)) if value is not None else 0

    def close(self) -> None:
        self._sync.close()


def make_counters(broker_url: str) -> Counters:
    if broker_url.startswith(("redis://", "rediss://", "unix://")):
        return RedisCounters(broker_url)
    return LocalCounters()
