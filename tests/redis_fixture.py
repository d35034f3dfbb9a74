"""A private Redis server for the tests that run several nodes (started by :mod:`bench.redisserver`).

``redis_server`` (session scope) finds Debian's ``redis-server`` (``apt-get install redis-server``
when it is missing), starts it daemonized on a free loopback port with nothing persisted, and
shuts it down when the session ends. ``redis_url`` gives each test its own logical database
(emptied first), so tests sharing the server never see each other's keys; pub/sub channels are
server-wide in Redis, which is why signald's channel names carry the database number.

Tests that need it are skipped (with the reason) when Redis cannot be installed or started or
coredis is missing, unless ``SIGNALD_TEST_REDIS=require`` (CI), which makes that an error.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterator

import pytest

from bench.redisserver import RedisServer, free_port, new_directory, redis_binary

__all__ = ["RedisServer", "free_port", "redis_binary", "redis_server", "redis_url"]

_databases = itertools.count(1)  # 0 is left alone; Redis has 16 by default


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    require = os.environ.get("SIGNALD_TEST_REDIS") == "require"
    directory = new_directory()
    try:
        import coredis  # noqa: F401
        server = RedisServer(redis_binary(), directory, free_port())
        server.start()
    except Exception as exc:
        shutil.rmtree(directory, ignore_errors=True)
        if require:
            raise
        pytest.skip(f"no Redis for the tests: {exc}")
    try:
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A logical database of its own for one test, emptied first."""
    db = next(_databases) % 16 or 1
    redis_server.flush(db)
    return redis_server.url(db)
