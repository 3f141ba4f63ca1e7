"""``PostgresStorage``: the Storage seam over one PostgreSQL database, shared by many processes and machines."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

from ...errors import OrchestrationAlreadyExistsError
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
from . import ops, transfer
from .batching import CreateBatcher
from .db import Connection, Database, Tx, connect
from .listener import NotificationListener, channel_for
from .migrations import check_version, describe, load_migrations, migrate_connection

T = TypeVar("T")

#: Terminal instances deleted per transaction by ``delete_instances_matching``: short transactions
#: keep a purge of millions from holding locks (or bloating one transaction) for long.
PURGE_BATCH = 5000


class PostgresStorage:
    """The ``Storage`` of one task hub in one PostgreSQL database.

    ``url`` is a libpq URL or conninfo string (``postgresql://user:password@host:port/dbname``).
    ``migrate=True`` applies pending schema migrations at ``open``; with ``migrate=False`` a database
    whose schema is not exactly this duratask's is refused (``SchemaVersionError``).

    Leases and fences use the database clock. Commits notify other processes through LISTEN/NOTIFY
    on the hub's channel; ``open`` starts a listener that feeds ``notifier``. Calls survive a server
    restart: see ``db.py`` for what is retried, for up to ``retry_seconds``.
    """

    def __init__(
        self,
        url: str,
        taskhub: str = "default",
        *,
        migrate: bool = True,
        min_connections: int = 1,
        max_connections: int = 10,
        retry_seconds: float = 60.0,
    ) -> None:
        self.url = url
        self.taskhub = taskhub
        self.migrate = migrate
        self.min_connections = min_connections
        self.max_connections = max_connections
        self.retry_seconds = retry_seconds
        self.notifier = Notifier()
        self.shared_across_processes = True
        #: Commits of other processes reach ``notifier`` through LISTEN (waiters poll only as a safety net).
        self.watches_other_processes = True
        self.channel = channel_for(taskhub)
        #: Tags this object's notifications, so its own listener skips them.
        self.origin = uuid.uuid4().hex
        self.schema_version = 0
        self._db: Database | None = None
        self._listener: NotificationListener | None = None
        self._open_lock = asyncio.Lock()
        #: Set when ``open_postgres_storage`` shares this object: its key, and how many users hold it.
        self._shared_key: _SharedKey | None = None
        self._references = 0
        self._creates = CreateBatcher(self._create_many)

    def __repr__(self) -> str:
        return f"PostgresStorage({describe(self.url)!r}, {self.taskhub!r})"

    # --- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Check or migrate the schema, open the pool, and start listening for other processes' commits.

        Idempotent; concurrent callers (users of a shared storage) wait for the first.
        """
        async with self._open_lock:
            if self._db is None:
                await self._open()

    async def _open(self) -> None:
        self.schema_version = await self._prepare_schema()
        db = Database(
            self.url,
            self.taskhub,
            self.channel,
            self.origin,
            min_connections=self.min_connections,
            max_connections=self.max_connections,
            retry_seconds=self.retry_seconds,
            on_commit=self._wake_local,
        )
        listener = NotificationListener(
            self.url, self.channel, self.origin, self.notifier.notify, self.notifier.notify_all
        )
        try:
            await db.open(timeout=30.0)
            await listener.start()
        except BaseException:
            await listener.stop()
            await db.close()
            raise
        self._db, self._listener = db, listener

    async def _prepare_schema(self) -> int:
        conn = await connect(self.url)
        try:
            migrations, where = load_migrations(), describe(self.url)
            if self.migrate:
                return await migrate_connection(conn, migrations, where)
            return await check_version(conn, migrations, where)
        finally:
            await conn.close()

    async def close(self) -> None:
        """Close the pool and the listener; a shared storage really closes when its last user does."""
        if self._shared_key is not None:
            self._references -= 1
            if self._references > 0:
                return
            if _shared.get(self._shared_key) is self:
                del _shared[self._shared_key]
            self._shared_key = None
        await self._creates.close()
        db, self._db = self._db, None
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.stop()
        if db is not None:
            await db.close()

    def _wake_local(self, topics: set[str]) -> None:
        # Waiters on this object wake as the commit returns; the NOTIFY wakes everyone else.
        self.notifier.notify(*topics)

    def _database(self) -> Database:
        if self._db is None:
            raise RuntimeError(f"{self!r} is not open")
        return self._db

    async def _read(self, fn: Callable[[Connection], Awaitable[T]]) -> T:
        return await self._database().read(fn)

    async def _write(self, fn: Callable[[Tx], Awaitable[T]], *, replay_safe: bool) -> T:
        return await self._database().write(fn, replay_safe=replay_safe)

    async def _write_statement(self, fn: Callable[[Tx], Awaitable[T]]) -> T:
        return await self._database().write_statement(fn, replay_safe=True)

    @property
    def listener_connections(self) -> int:
        """How many times the notification listener has connected (it reconnects after a restart)."""
        return 0 if self._listener is None else self._listener.connections

    # --- instances ----------------------------------------------------------------------------

    async def create_instance(self, new: NewInstance) -> None:
        # Concurrent starts share a transaction (batching.py).
        if not await self._creates.create(new):
            raise OrchestrationAlreadyExistsError(new.record.instance_id)

    async def _create_many(self, news: list[NewInstance]) -> set[str]:
        # Not replay-safe: had the first COMMIT happened, a retry would find the instances and refuse.
        return await self._write(lambda tx: ops.create_instances(tx, news), replay_safe=False)

    async def get_instance(self, instance_id: str) -> InstanceRecord | None:
        return await self._read(lambda conn: ops.get_instance(conn, self.taskhub, instance_id))

    async def query_instances(
        self, filter: InstanceFilter, limit: int, after: PageCursor | None
    ) -> list[InstanceRecord]:
        return await self._read(lambda conn: ops.query_instances(conn, self.taskhub, filter, limit, after))

    async def get_history(self, instance_id: str) -> list[HistoryEvent]:
        return await self._read(lambda conn: ops.get_history(conn, self.taskhub, instance_id))

    async def child_instance_ids(self, instance_id: str) -> list[str]:
        return await self._read(lambda conn: ops.child_instance_ids(conn, self.taskhub, instance_id))

    async def enqueue(self, messages: list[InboxMessage]) -> None:
        if messages:
            # Not replay-safe: a retry after a COMMIT that happened would deliver the messages twice.
            await self._write(lambda tx: ops.enqueue(tx, messages), replay_safe=False)

    async def delete_instances(self, instance_ids: list[str]) -> int:
        if not instance_ids:
            return 0
        return await self._write(lambda tx: ops.delete_instances(tx, instance_ids), replay_safe=True)

    async def delete_instances_matching(self, filter: InstanceFilter) -> int:
        total = 0
        while True:
            deleted = await self._write(
                lambda tx: ops.delete_matching_batch(tx, filter, PURGE_BATCH), replay_safe=True
            )
            total += deleted
            if deleted < PURGE_BATCH:
                return total

    async def delete_idle_instances(self, instance_ids: list[str]) -> int:
        if not instance_ids:
            return 0
        return await self._write(lambda tx: ops.delete_idle_instances(tx, instance_ids), replay_safe=True)

    async def next_visible_at(self) -> datetime | None:
        return await self._read(lambda conn: ops.next_visible_at(conn, self.taskhub))

    # --- orchestration work items -------------------------------------------------------------

    async def lease_orchestrations(
        self,
        limit: int,
        lease_seconds: float,
        *,
        id_prefix: str | None = None,
        exclude_id_prefix: str | None = None,
    ) -> list[OrchestrationLease]:
        # Replay-safe enough: leases taken by a COMMIT whose reply was lost just expire, as if a
        # worker had died holding them.
        return await self._write(
            lambda tx: ops.lease_orchestrations(tx, limit, lease_seconds, id_prefix, exclude_id_prefix),
            replay_safe=True,
        )

    async def commit_orchestrations(self, commits: list[OrchestrationCommit]) -> list[bool]:
        if not commits:
            return []
        # Fenced: replayed after a COMMIT that happened, each commit finds its lease released and is
        # rejected, so nothing is applied twice (the caller then sees False for a commit that held).
        return await self._write(lambda tx: ops.commit_orchestrations(tx, commits), replay_safe=True)

    async def commit_orchestrations_then_lease_activities(
        self, commits: list[OrchestrationCommit], limit: int, lease_seconds: float
    ) -> tuple[list[bool], list[ActivityLease]]:
        """Both in one transaction (``storage.base.commit_then_lease_activities``); the activities
        the commits schedule go to the caller first, and nobody is woken for those it took."""
        # Replay-safe: the commits are fenced, and leases taken by a lost COMMIT just expire.
        return await self._write(
            lambda tx: ops.commit_orchestrations_then_lease_activities(tx, commits, limit, lease_seconds),
            replay_safe=True,
        )

    async def abandon_orchestration(self, instance_id: str, token: str) -> None:
        await self._write(lambda tx: ops.abandon_orchestration(tx, instance_id, token), replay_safe=True)

    # --- activity work items ------------------------------------------------------------------

    async def lease_activities(self, limit: int, lease_seconds: float) -> list[ActivityLease]:
        return await self._write(lambda tx: ops.lease_activities(tx, limit, lease_seconds), replay_safe=True)

    async def complete_activities(self, completions: list[ActivityCompletion]) -> list[bool]:
        if not completions:
            return []
        return await self._write(lambda tx: ops.complete_activities(tx, completions), replay_safe=True)

    async def complete_activities_then_lease_orchestrations(
        self,
        completions: list[ActivityCompletion],
        limit: int,
        lease_seconds: float,
        *,
        exclude_id_prefix: str | None = None,
    ) -> tuple[list[bool], list[OrchestrationLease]]:
        """Both in one transaction (``storage.base.complete_then_lease_orchestrations``); the
        instances the results reach go to the caller first, and nobody is woken for those it took."""
        return await self._write(
            lambda tx: ops.complete_activities_then_lease_orchestrations(
                tx, completions, limit, lease_seconds, exclude_id_prefix
            ),
            replay_safe=True,
        )

    async def abandon_activity(self, activity_id: int, token: str) -> None:
        await self._write(lambda tx: ops.abandon_activity(tx, activity_id, token), replay_safe=True)

    async def renew_orchestration_lease(self, instance_id: str, token: str, lease_seconds: float) -> bool:
        return await self._write_statement(
            lambda tx: ops.renew_orchestration_lease(tx, instance_id, token, lease_seconds)
        )

    async def renew_activity_lease(self, activity_id: int, token: str, lease_seconds: float) -> bool:
        return await self._write_statement(
            lambda tx: ops.renew_activity_lease(tx, activity_id, token, lease_seconds)
        )

    # --- moving instances between storages ------------------------------------------------------

    async def export_instances(self, after: str | None, limit: int) -> list[InstanceDump]:
        return await self._read(lambda conn: transfer.export_instances(conn, self.taskhub, after, limit))

    async def import_instances(self, dumps: list[InstanceDump], *, replace: bool = False) -> int:
        if not dumps:
            return 0
        # Not replay-safe: had the first COMMIT happened, a retry would find the instances and raise.
        return await self._write(lambda tx: transfer.import_instances(tx, dumps, replace), replay_safe=False)


# --- one shared object per database, hub and event loop in a process -------------------------

_SharedKey = tuple[str, str, asyncio.AbstractEventLoop]
_shared: dict[_SharedKey, PostgresStorage] = {}


async def open_postgres_storage(url: str, taskhub: str = "default", *, migrate: bool = True) -> PostgresStorage:
    """The opened ``PostgresStorage`` of (database URL, hub) for the running event loop.

    Callers on one event loop (say a client and a worker in one process) share one object: one
    pool, one listener, and wake-ups between them without a round trip through the server. Each
    caller must ``await storage.close()``; the last close really closes. The first opener's
    ``migrate`` wins. Separate objects (as separate processes would have): ``PostgresStorage(...)``.
    """
    key = (url, taskhub, asyncio.get_running_loop())
    storage = _shared.get(key)
    if storage is None:
        storage = PostgresStorage(url, taskhub, migrate=migrate)
        storage._shared_key = key
        _shared[key] = storage
    storage._references += 1
    try:
        await storage.open()
    except BaseException:
        await storage.close()
        raise
    return storage
