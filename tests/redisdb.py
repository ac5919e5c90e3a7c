"""A Redis database of this process's own on 127.0.0.1:6379, for the tests and the benchmarks:
the first empty one from 15 down to 8, claimed with a key (SET NX) so two runs on one
machine never share one. The claimer flushes it when done."""

from __future__ import annotations

import os

CLAIM_KEY = "aurum:test:claimed-by"


def claim_redis_db(exclude: tuple[str, ...] = ()) -> str:
    """The URL of an empty Redis database, claimed for this process (see the docstring)."""
    import redis

    for db in range(15, 7, -1):
        url = f"redis://127.0.0.1:6379/{db}"
        if url in exclude:
            continue
        client = redis.Redis.from_url(url)
        try:
            if client.dbsize() == 0 and client.set(CLAIM_KEY, os.getpid(), nx=True, ex=7200):
                return url
        except redis.ConnectionError:
            return url  # the redis_client fixture says Redis is down
        finally:
            client.close()
    raise RuntimeError("no empty Redis database among 8-15 on 127.0.0.1:6379: set AURUM_TEST_REDIS")
