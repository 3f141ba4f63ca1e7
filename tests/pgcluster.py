"""A throw-away PostgreSQL cluster: the one launcher behind the tests' server (tests/pgserver.py) and
the benchmarks' server (bench/pg.py).

``PostgresCluster`` runs ``initdb`` and ``pg_ctl`` from a local PostgreSQL installation (Debian's
``postgresql-15`` puts them in ``/usr/lib/postgresql/15/bin``). The cluster lives in a temporary
directory, listens on a free TCP port of 127.0.0.1 (and a unix socket in the same directory) and
trusts local connections; the caller chooses the superuser's name and the server settings.

PostgreSQL refuses to run as root. When we run as root, the server runs as the unprivileged
``postgres`` user the Debian package creates (else ``nobody``), by switching user in the child
process; as a normal user it simply runs as that user.

No pytest here: the benchmarks import this module without the test dependencies installed.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import psycopg

_TOOLS = ("initdb", "pg_ctl", "postgres")
#: How long `pg_ctl` waits for the server to come up or go down, and how long any tool may take.
_START_WAIT_S = 120
_STOP_WAIT_S = 60
_TOOL_TIMEOUT_S = 180


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries on this machine, or no user to run them as."""


def find_bin_dir(variable: str = "DURATASK_PG_BIN") -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``: the one the environment variable
    ``variable`` names, else a local installation, preferring version 15, then the newest."""
    explicit = os.environ.get(variable)
    candidates = [Path(explicit)] if explicit else []
    if not explicit:
        versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
        candidates += sorted(versions, key=lambda p: p.parent.name != "15")
        on_path = shutil.which("initdb")
        if on_path:
            candidates.append(Path(on_path).parent)
    for bin_dir in candidates:
        if all((bin_dir / tool).is_file() for tool in _TOOLS):
            return bin_dir
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found "
        f"(looked in {', '.join(map(str, candidates)) or 'nothing'}). Install them, e.g. "
        f"`apt-get install -y postgresql` (Debian/Ubuntu), or set {variable} to their directory."
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


def with_database(url: str, database: str) -> str:
    """``url`` (of any database on a server) pointed at ``database`` instead."""
    return url.rsplit("/", 1)[0] + "/" + database


def create_database(maintenance_url: str, name: str) -> str:
    """Create an empty database on the server of ``maintenance_url``; returns its URL."""
    with psycopg.connect(maintenance_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    return with_database(maintenance_url, name)


class PostgresCluster:
    """One PostgreSQL cluster in a temporary directory, initialised on construction (or copied from
    ``template``, a stopped cluster: much faster than initdb); ``start``/``stop``/``restart`` it at
    will, ``destroy`` it at the end."""

    def __init__(
        self,
        *,
        superuser: str,
        settings: Mapping[str, str],
        bin_dir: Path | None = None,
        template: PostgresCluster | None = None,
        prefix: str = "duratask-pg-",
    ) -> None:
        self.superuser = superuser
        self.settings = dict(settings)
        self.bin_dir = bin_dir or find_bin_dir()
        self.user = _unprivileged_user()
        self.base = Path(tempfile.mkdtemp(prefix=prefix))
        self.data_dir = self.base / "data"
        self.log_file = self.base / "server.log"
        self.port = free_port()
        try:
            if self.user is not None:
                os.chown(self.base, self.user.pw_uid, self.user.pw_gid)
            if template is None:
                self._run("initdb", "-D", str(self.data_dir), "-U", superuser, "--auth=trust", "-E", "UTF8",
                          "--locale=C", "--no-sync")  # fmt: skip
            else:
                shutil.copytree(template.data_dir, self.data_dir, symlinks=True)
                for leftover in ("postmaster.pid", "postmaster.opts"):
                    (self.data_dir / leftover).unlink(missing_ok=True)
                self._chown_tree()
        except BaseException:
            shutil.rmtree(self.base, ignore_errors=True)
            raise

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
            timeout=_TOOL_TIMEOUT_S,
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
            [f"-p {self.port}", f"-k {self.base}"] + [f"-c {k}={v}" for k, v in self.settings.items()]
        )
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-o", options,
                  "-w", "-t", str(_START_WAIT_S), "start")  # fmt: skip

    def is_running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data_dir), "status", check=False).returncode == 0

    def ensure_started(self) -> None:
        if not self.is_running():
            self.start()

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; ``mode="immediate"`` is a crash (no shutdown checkpoint)."""
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t", str(_STOP_WAIT_S), "stop",
                  check=False)  # fmt: skip

    def restart(self, mode: str = "fast", down_seconds: float = 0.0) -> None:
        """Stop the server, stay down ``down_seconds``, start it again on the same port."""
        self.stop(mode)
        time.sleep(down_seconds)
        self.start()

    def destroy(self) -> None:
        # Nothing in a throw-away cluster needs a shutdown checkpoint.
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    # --- addresses ----------------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.superuser}@127.0.0.1:{self.port}/{database}"

    def postmaster_pid(self) -> int:
        return int((self.data_dir / "postmaster.pid").read_text().split()[0])
