"""A real, throw-away PostgreSQL server for the tests.

``PostgresServer`` runs ``initdb`` and ``pg_ctl`` from a local PostgreSQL installation (Debian's
``postgresql-15`` puts them in ``/usr/lib/postgresql/15/bin``; CI runs ``apt-get install -y postgresql``).
The cluster lives in a temporary directory, listens on a free TCP port of 127.0.0.1 (and a unix
socket in the same directory), trusts local connections, and runs with ``fsync=off`` because test
data need not survive a power cut (a crash of the server itself loses nothing committed).

PostgreSQL refuses to run as root. When the tests run as root, the server runs as the unprivileged
``postgres`` user the Debian package creates (else ``nobody``), by switching user in the child
process; as a normal user it simply runs as that user.

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
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

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


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def find_bin_dir() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``; prefers version 15."""
    explicit = os.environ.get("DURATASK_PG_BIN")
    candidates = [Path(explicit)] if explicit else []
    if not explicit:
        versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
        candidates += sorted(versions, key=lambda p: p.parent.name != "15")
        on_path = shutil.which("initdb")
        if on_path:
            candidates.append(Path(on_path).parent)
    for bin_dir in candidates:
        if all((bin_dir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return bin_dir
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found "
        f"(looked in {', '.join(map(str, candidates)) or 'nothing'}). Install them, e.g. "
        "`apt-get install -y postgresql` (Debian/Ubuntu), or set DURATASK_PG_BIN to their directory."
    )


def _version_key(path: Path) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in path.parent.name.split("."))
    except ValueError:
        return (0,)


def _unprivileged_user() -> pwd.struct_passwd | None:
    """The user to run the server as when we are root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise PostgresUnavailable("running as root, and neither user 'postgres' nor 'nobody' exists to run PostgreSQL")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory; ``start``/``stop``/``restart`` it at will."""

    def __init__(self, bin_dir: Path | None = None, template: PostgresServer | None = None) -> None:
        self.bin_dir = bin_dir or find_bin_dir()
        self.user = _unprivileged_user()
        self.base = Path(tempfile.mkdtemp(prefix="duratask-pg-"))
        self.data_dir = self.base / "data"
        self.log_file = self.base / "server.log"
        self.port = free_port()
        if self.user is not None:
            os.chown(self.base, self.user.pw_uid, self.user.pw_gid)
        if template is None:
            self._run("initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                      "--locale=C", "--no-sync")
        else:  # a copy of a fresh cluster: much faster than initdb
            shutil.copytree(template.data_dir, self.data_dir, symlinks=True)
            for leftover in ("postmaster.pid", "postmaster.opts"):
                (self.data_dir / leftover).unlink(missing_ok=True)
            self._chown_tree()

    def _chown_tree(self) -> None:
        if self.user is None:
            return
        for root, dirs, files in os.walk(self.data_dir):
            for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                os.lchown(name, self.user.pw_uid, self.user.pw_gid)

    # --- process control ----------------------------------------------------------------------

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        user = self.user
        proc = subprocess.run(
            [str(self.bin_dir / tool), *args],
            check=False,  # checked below, with the server's log in the message
            cwd=self.base,  # the server user may not be able to read our working directory
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
            env={**os.environ, "HOME": str(self.base), "LC_ALL": "C"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"{tool} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n{self.server_log()}")
        return proc

    def server_log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def start(self) -> None:
        options = " ".join(
            [f"-p {self.port}", f"-k {self.base}"] + [f"-c {k}={v}" for k, v in _SERVER_SETTINGS.items()]
        )
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-o", options, "-w", "-t", "60",
                  "start")

    def is_running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data_dir), "status", check=False).returncode == 0

    def ensure_started(self) -> None:
        if not self.is_running():
            self.start()

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; ``mode="immediate"`` is a crash (no shutdown checkpoint)."""
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60", "stop", check=False)

    def restart(self, mode: str = "fast", down_seconds: float = 0.0) -> None:
        """Stop the server, stay down ``down_seconds``, start it again on the same port."""
        self.stop(mode)
        time.sleep(down_seconds)
        self.start()

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    # --- databases ----------------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database; returns its URL."""
        name = name or f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)


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
