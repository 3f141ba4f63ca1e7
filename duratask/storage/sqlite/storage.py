"""``SqliteStorage``: the Storage seam over one SQLite database (a file, or memory)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from ...history import HistoryEvent
from ...notify import Notifier
from ..base import (
    ActivityCompletion,
    ActivityLease,
    InboxMessage,
    InstanceDump,
    InstanceFilter,
    InstanceRecord,
    NewInstance,
    OrchestrationCommit,
    OrchestrationLease,
    PageCursor,
)
from . import ops, purge, transfer
from .migrations import load_migrations, migrate
from .rows import from_micros, to_micros
from .runner import SqliteRunner, Tx
from .schema import BUSY_TIMEOUT_MS, check_version

T = TypeVar("T")

MEMORY = ":memory:"

JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
#: How often a file database checks for commits by other processes to wake this process's waiters.
WATCH_INTERVAL = 0.01


class SqliteStorage:
    """The ``Storage`` of one task hub in one SQLite database.

    ``path`` is a file (created if missing; several processes may share it) or ``":memory:"``
    (private to this object: share it within a process through ``open_sqlite_storage``).

    ``durable=True`` syncs the write-ahead log on every commit (``synchronous=FULL``): a commit that
    returned survives power loss. ``durable=False`` (``synchronous=NORMAL``) skips that sync: still
    safe against a crashed process, but the last commits before an OS crash or power cut may be lost.
    Leases and activity results are never synced on their own (losing them to a power cut only
    repeats work); the next synced commit, which the log orders after them, makes them durable.

    ``migrate=True`` applies pending schema migrations at ``open``; with ``migrate=False`` a database
    whose schema is not exactly this duratask's is refused (``SchemaVersionError``).
    """

    #: Messages queued for entities also notify ``notify.ENTITIES`` (entity waiters listen to it).
    notifies_entities = True

    def __init__(
        self, path: str, taskhub: str = "default", *, durable: bool = True, migrate: bool = True
    ) -> None:
        self.path = path
        self.taskhub = taskhub
        self.durable = durable
        self.migrate = migrate
        self.notifier = Notifier()
        self.shared_across_processes = path != MEMORY
        #: Commits by other processes wake this process's waiters (``PRAGMA data_version``, every
        #: ``WATCH_INTERVAL``), so waiters need not poll for them.
        self.watches_other_processes = self.shared_across_processes
        self._lock = threading.Lock()
        # ``next_visible_at`` as last read, and under which generation: the generation moves on
        # (on the connection thread) after every commit that queued a message for later, here or
        # in another process, and only a reading of the current generation is trusted.
        self._due_generation = 0
        self._due: tuple[int, int | None] | None = None
        self._runner: SqliteRunner | None = None
        self._closed = False
        self._references = 1
        self._registry_key: tuple[str, str] | None = None

    def __repr__(self) -> str:
        return f"SqliteStorage({self.path!r}, {self.taskhub!r}, durable={self.durable})"

    # --- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and migrate; later calls (other users of a shared storage) wait for the first."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self!r} is closed")
            if self._runner is None:
                self._runner = SqliteRunner(
                    self._connect,
                    self.taskhub,
                    self.notifier,
                    name=f"duratask-sqlite-{self.taskhub}",
                    durable=self.durable,
                    watch_interval=WATCH_INTERVAL if self.shared_across_processes else None,
                    on_delayed=self._forget_due,
                )
                self._runner.start()
            runner = self._runner
        try:
            await runner.wait_ready()
        except BaseException:
            with self._lock:
                if self._runner is runner:
                    self._runner = None
            raise

    async def close(self) -> None:
        """Release one reference; the last one finishes queued work and closes the connection."""
        with _registry_lock, self._lock:
            if self._closed:
                return
            self._references -= 1
            if self._references > 0:
                return
            self._closed = True
            if self._registry_key is not None and _registry.get(self._registry_key) is self:
                del _registry[self._registry_key]
            runner, self._runner = self._runner, None
        if runner is not None:
            await runner.stop()

    def _connect(self) -> sqlite3.Connection:
        """Runs on the connection thread, which then owns the connection (and lends it, under
        its lock, to a caller that finds it idle: ``SqliteRunner.call``)."""
        try:
            conn = sqlite3.connect(
                self.path,
                isolation_level=None,
                cached_statements=256,
                check_same_thread=False,
                timeout=BUSY_TIMEOUT_MS / 1000,  # already for the first touch, as for everything after
            )
            conn.execute("PRAGMA schema_version")  # connect() is lazy: touch the file now
        except sqlite3.OperationalError as exc:
            raise sqlite3.OperationalError(f"cannot open the SQLite database {self.path!r}: {exc}") from exc
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {'FULL' if self.durable else 'NORMAL'}")
            # Let checkpoints shrink the log file back instead of keeping its largest size forever.
            conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
            where = f"SQLite database {self.path!r}"
            if self.migrate:
                migrate(conn, load_migrations(), _now_micros(), where=where)
            else:
                check_version(conn, load_migrations(), where)
        except BaseException:
            conn.close()
            raise
        return conn

    # ``quick``: a call of bounded, small cost, which may run on the caller's thread (runner.py).

    async def _read(self, fn: Callable[[Tx], T], *, quick: bool = False) -> T:
        return await self._runner_or_fail().call(fn, write=False, quick=quick)

    async def _write(self, fn: Callable[[Tx], T], *, quick: bool = False) -> T:
        return await self._runner_or_fail().call(fn, write=True, quick=quick)

    async def _write_unsynced(self, fn: Callable[[Tx], T]) -> T:
        """A quick write whose loss in a power cut only repeats work: no disk sync of its own."""
        return await self._runner_or_fail().call(fn, write=True, sync=False, quick=True)

    def _runner_or_fail(self) -> SqliteRunner:
        runner = self._runner
        if runner is None:
            raise RuntimeError(f"{self!r} is not open")
        return runner

    # --- instances ----------------------------------------------------------------------------

    async def create_instance(self, new: NewInstance) -> None:
        await self._write(lambda tx: ops.create_instance(tx, new), quick=True)

    async def get_instance(self, instance_id: str) -> InstanceRecord | None:
        return await self._read(lambda tx: ops.get_instance(tx, instance_id), quick=True)

    async def query_instances(
        self, filter: InstanceFilter, limit: int, after: PageCursor | None
    ) -> list[InstanceRecord]:
        return await self._read(lambda tx: ops.query_instances(tx, filter, limit, after))

    async def get_history(self, instance_id: str) -> list[HistoryEvent]:
        return await self._read(lambda tx: ops.get_history(tx, instance_id))

    async def child_instance_ids(self, instance_id: str) -> list[str]:
        return await self._read(lambda tx: ops.child_instance_ids(tx, instance_id))

    async def enqueue(self, messages: list[InboxMessage]) -> None:
        if messages:
            await self._write(lambda tx: ops.enqueue(tx, messages))

    async def delete_instances(self, instance_ids: list[str]) -> int:
        if not instance_ids:
            return 0
        return await self._write(lambda tx: purge.delete_instances(tx, instance_ids))

    async def delete_instances_matching(self, filter: InstanceFilter) -> int:
        # A transaction per batch (see purge.py): other writers get in between.
        total = 0
        while True:
            deleted = await self._write(lambda tx: purge.delete_matching_batch(tx, filter, purge.PURGE_BATCH))
            total += deleted
            if deleted < purge.PURGE_BATCH:
                return total

    async def delete_idle_instances(self, instance_ids: list[str]) -> int:
        if not instance_ids:
            return 0
        return await self._write(lambda tx: ops.delete_idle_instances(tx, instance_ids))

    async def next_visible_at(self) -> datetime | None:
        """When the earliest not-yet-visible message becomes visible. Workers ask before every
        sleep; the answer only changes when a message is queued for later (which the commit
        says) or that moment passes, so the last reading is reused until then."""
        known = self._due
        if known is not None and known[0] == self._due_generation:
            due = known[1]
            if due is None:
                return None
            if due > time.time_ns() // 1000:
                return from_micros(due)
        generation = self._due_generation
        reading = await self._read(ops.next_visible_at, quick=True)
        if generation == self._due_generation:
            self._due = (generation, None if reading is None else to_micros(reading))
        return reading

    def _forget_due(self) -> None:
        """On the connection thread, after a commit that queued a message for later."""
        self._due_generation += 1

    # --- orchestration work items -------------------------------------------------------------

    async def lease_orchestrations(
        self,
        limit: int,
        lease_seconds: float,
        *,
        id_prefix: str | None = None,
        exclude_id_prefix: str | None = None,
    ) -> list[OrchestrationLease]:
        return await self._write_unsynced(
            lambda tx: ops.lease_orchestrations(tx, limit, lease_seconds, id_prefix, exclude_id_prefix)
        )

    async def commit_orchestrations(self, commits: list[OrchestrationCommit]) -> list[bool]:
        if not commits:
            return []
        return await self._write(lambda tx: ops.commit_orchestrations(tx, commits), quick=True)

    async def commit_orchestrations_then_lease_activities(
        self, commits: list[OrchestrationCommit], limit: int, lease_seconds: float
    ) -> tuple[list[bool], list[ActivityLease]]:
        """Both in one transaction (``storage.base.commit_then_lease_activities``)."""
        return await self._write(
            lambda tx: ops.commit_orchestrations_then_lease_activities(tx, commits, limit, lease_seconds),
            quick=True,
        )

    async def abandon_orchestration(self, instance_id: str, token: str) -> None:
        await self._write_unsynced(lambda tx: ops.abandon_orchestration(tx, instance_id, token))

    async def renew_orchestration_lease(self, instance_id: str, token: str, lease_seconds: float) -> bool:
        return await self._write_unsynced(
            lambda tx: ops.renew_orchestration_lease(tx, instance_id, token, lease_seconds)
        )

    # --- activity work items ------------------------------------------------------------------

    async def lease_activities(self, limit: int, lease_seconds: float) -> list[ActivityLease]:
        return await self._write_unsynced(lambda tx: ops.lease_activities(tx, limit, lease_seconds))

    async def complete_activities(self, completions: list[ActivityCompletion]) -> list[bool]:
        if not completions:
            return []
        return await self._write_unsynced(lambda tx: ops.complete_activities(tx, completions))

    async def complete_activities_then_lease_orchestrations(
        self,
        completions: list[ActivityCompletion],
        limit: int,
        lease_seconds: float,
        *,
        exclude_id_prefix: str | None = None,
    ) -> tuple[list[bool], list[OrchestrationLease]]:
        """Both in one transaction (``storage.base.complete_then_lease_orchestrations``)."""
        return await self._write_unsynced(
            lambda tx: ops.complete_activities_then_lease_orchestrations(
                tx, completions, limit, lease_seconds, exclude_id_prefix
            )
        )

    async def abandon_activity(self, activity_id: int, token: str) -> None:
        await self._write_unsynced(lambda tx: ops.abandon_activity(tx, activity_id, token))

    async def renew_activity_lease(self, activity_id: int, token: str, lease_seconds: float) -> bool:
        return await self._write_unsynced(
            lambda tx: ops.renew_activity_lease(tx, activity_id, token, lease_seconds)
        )

    # --- moving instances between storages ------------------------------------------------------

    async def export_instances(self, after: str | None, limit: int) -> list[InstanceDump]:
        return await self._read(lambda tx: transfer.export_instances(tx, after, limit))

    async def import_instances(self, dumps: list[InstanceDump], *, replace: bool = False) -> int:
        if not dumps:
            return 0
        return await self._write(lambda tx: transfer.import_instances(tx, dumps, replace))


def _now_micros() -> int:
    return time.time_ns() // 1000


# --- one shared object per database and hub in a process -------------------------------------

_registry: dict[tuple[str, str], SqliteStorage] = {}
_registry_lock = threading.Lock()


def _forget_parent_storages() -> None:
    """In a forked child the parent's storages have no connection thread: start afresh."""
    global _registry_lock
    _registry_lock = threading.Lock()
    _registry.clear()


os.register_at_fork(after_in_child=_forget_parent_storages)


def resolve_path(path: str) -> str:
    """The key a database is shared under: ``":memory:"`` or the file's absolute, real path."""
    return path if path == MEMORY else os.path.realpath(path)


async def open_sqlite_storage(
    path: str, taskhub: str = "default", durable: bool = True, *, migrate: bool = True
) -> SqliteStorage:
    """The process's one opened ``SqliteStorage`` for (database, hub).

    Every caller gets the same object (so in-process notifications reach every client and worker,
    and ``":memory:"`` is one database shared by them) and must ``await storage.close()`` when done:
    the last close really closes. The first opener's ``durable`` and ``migrate`` win.
    """
    key = (resolve_path(path), taskhub)
    with _registry_lock:
        storage = _registry.get(key)
        if storage is None:
            storage = SqliteStorage(key[0], taskhub, durable=durable, migrate=migrate)
            storage._registry_key = key
            _registry[key] = storage
        else:
            with storage._lock:
                storage._references += 1
    try:
        await storage.open()
    except BaseException:
        await storage.close()
        raise
    return storage
