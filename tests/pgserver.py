"""A real, throw-away PostgreSQL server for the tests.

``PostgresServer`` is the launcher of tests/pgcluster.py (a cluster in a temporary directory, on a
free port of 127.0.0.1, trusting local connections, run as ``postgres``/``nobody`` when we are root;
CI runs ``apt-get install -y postgresql``) with the tests' settings: ``fsync=off`` because test data
need not survive a power cut (a crash of the server itself loses nothing committed).

Fixtures (register them by importing this module's fixtures in ``tests/conftest.py``):

- ``pg_server``: the session's server (``PostgresServer``), started on first use, gone at exit.
- ``pg_url``: URL of a database shared by the session; tests keep apart by unique task hubs
  (``session_database_url()`` is the same without a fixture, for the storage contract factories).
- ``pg_fresh_url``: URL of a new, empty database for one test (migration tests).
- ``pg_private_server``: a server apart from the session's, for tests that stop or restart it
  (one per test module, started again before each test if needed).

If no PostgreSQL binaries are found the fixtures fail, saying how to install them: a storage left
untested must be visible, not a silent skip. ``DURATASK_PG_BIN`` names a bin directory explicitly.
"""

from __future__ import annotations

import atexit
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pgcluster import PostgresCluster, PostgresUnavailable, create_database

SUPERUSER = "duratask"
SHARED_DATABASE = "duratask_test"
#: Distinguishes this session's task hubs from earlier sessions' in a shared database.
SESSION_ID = uuid.uuid4().hex[:8]
_SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    # Test data need not survive an OS crash or power cut, but must survive a crash of the server
    # (restart tests stop it with "immediate"): no fsync, yet every commit written to the WAL.
    "fsync": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "shared_buffers": "128MB",
}


class PostgresServer(PostgresCluster):
    """The tests' cluster (tests/pgcluster.py), with the settings above; ``start``/``stop``/``restart``
    it at will."""

    def __init__(self, bin_dir: Path | None = None, template: PostgresServer | None = None) -> None:
        super().__init__(superuser=SUPERUSER, settings=_SERVER_SETTINGS, bin_dir=bin_dir, template=template)

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database; returns its URL."""
        return create_database(self.url(), name or f"t_{uuid.uuid4().hex[:16]}")


def start_server(template: PostgresServer | None = None) -> PostgresServer:
    """A running server; with ``template`` (a stopped, never-started cluster), a copy of it."""
    server = PostgresServer(template=template)
    try:
        server.start()
    except BaseException:
        server.destroy()
        raise
    return server


_template: PostgresServer | None = None


def _template_cluster() -> PostgresServer:
    """A freshly initialised cluster, never started, that private servers copy (initdb is slow)."""
    global _template
    if _template is None:
        _template = PostgresServer()
        atexit.register(_template.destroy)
    return _template


def _start_or_fail() -> PostgresServer:
    try:
        return start_server(_template_cluster())
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


# --- the session's server, shared by fixtures and by plain functions (storage factories) ------

_session_server: PostgresServer | None = None
_session_database: str | None = None


def session_server() -> PostgresServer:
    """The test session's server, started on first use and destroyed when the process exits."""
    global _session_server
    if _session_server is None:
        _session_server = _start_or_fail()
        atexit.register(_session_server.destroy)
    return _session_server


def session_database_url() -> str:
    """A database shared by the session (tests keep apart by task hub); created on first use.

    ``DURATASK_TEST_POSTGRES_URL`` points it at an existing database instead (e.g. a CI service);
    tests that restart a server still start their own.
    """
    global _session_database
    if _session_database is None:
        _session_database = os.environ.get("DURATASK_TEST_POSTGRES_URL") or session_server().create_database(
            SHARED_DATABASE
        )
    return _session_database


def unique_name(prefix: str = "t") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server() -> PostgresServer:
    return session_server()


@pytest.fixture(scope="session")
def pg_url() -> str:
    return session_database_url()


@pytest.fixture
def pg_fresh_url(pg_server: PostgresServer) -> str:
    return pg_server.create_database()


@pytest.fixture(scope="module")
def _module_private_server() -> Iterator[PostgresServer]:
    server = _start_or_fail()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pg_private_server(_module_private_server: PostgresServer) -> PostgresServer:
    """A server apart from the session's, which the test may stop, crash and restart at will.

    One per test module (started again if a previous test left it down): the session's server and
    the storages of other modules never see its restarts.
    """
    _module_private_server.ensure_started()
    return _module_private_server
