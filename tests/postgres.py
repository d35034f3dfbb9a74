"""A private PostgreSQL server for the test session, and a fresh database per test.

``postgres_server`` (session scope) starts one with :func:`bench.pgserver.private_server` (the
code the benchmark uses too: Debian's PostgreSQL, installed when missing, ``initdb`` as the
``postgres`` user in a temporary directory, a free loopback port, ``fsync`` off) and stops it
when the session ends. ``postgres_url`` creates an empty database for one test (``CREATE
DATABASE`` is cheap); they all go with the server at the end.

Tests that need it are skipped (with the reason) when PostgreSQL cannot be installed or started
or psycopg is missing, unless ``SIGNALD_TEST_POSTGRES=require`` (CI), which makes that an error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from bench.pgserver import PostgresServer, bin_dir, create_database, private_server

__all__ = ["PostgresServer", "create_database", "postgres_server", "postgres_url"]


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


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    return create_database(postgres_server)
