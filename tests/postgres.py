"""A private PostgreSQL server for the test session, and a fresh database per test.

``postgres_server`` (session scope) starts one with :func:`bench.pgserver.private_server` (the
code the benchmark uses too: Debian's PostgreSQL, installed when missing, ``initdb`` as the
``postgres`` user in a temporary directory, a free loopback port, ``fsync`` off) and stops it
when the session ends. ``postgres_url`` gives one test an empty database that no test used
before; it is dropped once the test is over.

``CREATE DATABASE`` copies template1 (7 MB) and the suite asks for about two hundred: 0.05 s each
on a quiet machine, 0.2-0.45 s while the suite runs, and their files (with the WAL they wrote)
took the session's teardown 15 s to delete. :class:`FreshDatabases` makes them on a thread of
its own a few tests ahead, while the tests wait on sockets and timers, and drops each once its
test is over, so neither cost sits in a test's set-up or the session's end.

Tests that need it are skipped (with the reason) when PostgreSQL cannot be installed or started
or psycopg is missing, unless ``SIGNALD_TEST_POSTGRES=require`` (CI), which makes that an error.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Iterator

import pytest

from bench.pgserver import PostgresServer, bin_dir, create_database, private_server

__all__ = ["FreshDatabases", "PostgresServer", "create_database", "postgres_server", "postgres_url"]


class FreshDatabases:
    """Empty databases on ``server``, created ``ahead`` at a time on a worker thread; used ones
    are dropped there too (``WITH (FORCE)``: a killed daemon's sessions may still linger).

    Every database is new (never handed out twice), so a test sees what a fresh ``CREATE
    DATABASE`` gives, settings included. A failed attempt (a test stops and restarts the server
    now and then) is tried again; one that keeps failing reaches the test that waits for it.
    """

    def __init__(self, server: PostgresServer, ahead: int = 3, give_up_s: float = 60.0) -> None:
        self.server, self.ahead, self.give_up_s = server, ahead, give_up_s
        self._ready: deque[str] = deque()
        self._used: deque[str] = deque()
        self._failure: BaseException | None = None
        self._closed = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._work, name="fresh-databases", daemon=True)
        self._thread.start()

    def take(self) -> str:
        """A new empty database's URL (waits while the worker makes one)."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._ready or self._failure, timeout=self.give_up_s + 30):
                raise TimeoutError("no fresh PostgreSQL database in time")
            if not self._ready:
                raise RuntimeError("cannot create a PostgreSQL database for the test") from self._failure
            url = self._ready.popleft()
            self._changed.notify_all()
            return url

    def used(self, url: str) -> None:
        """``url``'s test is over: drop its database (later, on the worker)."""
        with self._changed:
            self._used.append(url)
            self._changed.notify_all()

    def close(self) -> None:
        """Stop the worker; databases not dropped yet go with the server's directory."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._thread.join(timeout=self.give_up_s)

    def _next_job(self) -> str | None:
        """"create", "drop", or None once closed; waits while there is nothing to do."""
        with self._changed:
            self._changed.wait_for(lambda: self._closed or len(self._ready) < self.ahead or bool(self._used))
            if self._closed:
                return None
            return "create" if len(self._ready) < self.ahead else "drop"

    def _work(self) -> None:
        failing_since: float | None = None
        while (job := self._next_job()) is not None:
            try:
                if job == "create":
                    url = create_database(self.server, file_copy=True)
                    with self._changed:
                        self._ready.append(url)
                        self._failure = None
                        self._changed.notify_all()
                    failing_since = None
                else:
                    self._drop_one()
            except Exception as exc:  # creating: the server is being restarted by a test, or gone for good
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > self.give_up_s:
                    with self._changed:
                        self._failure = exc
                        self._used.clear()  # not droppable either: they go with the directory
                        self._changed.notify_all()
                time.sleep(0.2)

    def _drop_one(self) -> None:
        """Drop the oldest used database; one that cannot be dropped now (the server restarting)
        is left to go with the server's directory, never in the way of a new one."""
        import psycopg

        with self._changed:
            name = self._used.popleft().rsplit("/", 1)[1]
        with contextlib.suppress(psycopg.Error), psycopg.connect(self.server.url(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    require = os.environ.get("SIGNALD_TEST_POSTGRES") == "require"
    try:
        import psycopg  # noqa: F401
        bin_dir()
    except Exception as exc:
        if require:
            raise
        pytest.skip(f"no PostgreSQL for the tests: {exc}")
    with private_server(durable=False) as server:
        yield server


@pytest.fixture(scope="session")
def fresh_databases(postgres_server: PostgresServer) -> Iterator[FreshDatabases]:
    databases = FreshDatabases(postgres_server)
    try:
        yield databases
    finally:
        databases.close()


@pytest.fixture
def postgres_url(fresh_databases: FreshDatabases) -> Iterator[str]:
    url = fresh_databases.take()
    yield url
    fresh_databases.used(url)
