"""Connections to PostgreSQL: a pool, transactions, and retries across connection failures.

A storage call is a read (one statement outside a transaction) or a write (one transaction). When
the connection fails, which happens whenever the server restarts or fails over, a call is retried
on a fresh connection until ``retry_seconds`` have passed, as long as retrying cannot apply it twice:

- reads, always;
- writes that failed before COMMIT was sent (nothing was applied);
- writes whose COMMIT may or may not have happened, only when applying them again changes nothing
  more (``replay_safe``): fenced commits and completions, lease releases, deletes.

A failure of the COMMIT itself of any other write is raised to the caller, who cannot be told
whether it happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from .sql import Q

T = TypeVar("T")

log = logging.getLogger("duratask.storage.postgres")

Connection = psycopg.AsyncConnection[Any]

#: SQLSTATE classes and codes after which the same statement may succeed on a new attempt:
#: connection exceptions, server shutting down or starting, serialization failures and deadlocks,
#: too many connections.
_TRANSIENT_CLASSES = ("08",)
_TRANSIENT_CODES = frozenset({"57P01", "57P02", "57P03", "40001", "40P01", "53300"})

#: How long one attempt waits for a pooled connection, and how long the pool keeps reconnecting in
#: the background before it leaves that to the next request (see ``Database``).
_CONNECTION_WAIT_SECONDS = 5.0
_RECONNECT_SECONDS = 1.0

#: NOTIFY payloads are limited to 8000 bytes; stay well below.
_MAX_PAYLOAD_BYTES = 7000


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` says the connection or the server was unavailable, not that the SQL was wrong."""
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate
    return state is None or state.startswith(_TRANSIENT_CLASSES) or state in _TRANSIENT_CODES


class Notification(msgspec.Struct, frozen=True):
    """The payload of a NOTIFY: which storage object sent it, and the topics to wake.

    A listener skips its own storage's notifications: that storage already woke its waiters at
    commit, and a late second wake-up would look like a change that did not happen.
    """

    origin: str
    topics: list[str]


_encoder = msgspec.json.Encoder()


def notification_payloads(origin: str, topics: set[str] | list[str]) -> list[str]:
    """``topics`` as NOTIFY payloads, split so that each fits in one NOTIFY."""
    budget = _MAX_PAYLOAD_BYTES - len(_encoder.encode(Notification(origin, [])))
    payloads: list[str] = []
    chunk: list[str] = []
    size = 0
    for topic in sorted(topics):
        cost = len(_encoder.encode(topic)) + 1
        if chunk and size + cost > budget:
            payloads.append(_encoder.encode(Notification(origin, chunk)).decode())
            chunk, size = [], 0
        chunk.append(topic)
        size += cost
    if chunk:
        payloads.append(_encoder.encode(Notification(origin, chunk)).decode())
    return payloads


_PIPELINES = psycopg.AsyncPipeline.is_supported()


def _pipeline(conn: Connection) -> contextlib.AbstractAsyncContextManager[psycopg.AsyncPipeline | None]:
    """Pipeline mode (libpq 14+): a write's statements travel together and the client waits only
    where it reads a result, so a group commit costs three round trips rather than ten."""
    return conn.pipeline() if _PIPELINES else contextlib.nullcontext()


class Tx:
    """What a write sees: the connection inside its transaction, the hub, the storage object's
    origin (its leases are marked with it), and the topics to notify."""

    __slots__ = ("conn", "origin", "planned_by_index", "taskhub", "topics")

    def __init__(self, conn: Connection, taskhub: str, origin: str = "") -> None:
        self.conn = conn
        self.taskhub = taskhub
        self.origin = origin
        self.topics: set[str] = set()
        #: The planner settings of ``ops.plan_by_index`` are in force (they last the transaction).
        self.planned_by_index = False

    def notify(self, *topics: str) -> None:
        """Wake waiters of ``topics``, in every process, once the transaction has committed."""
        self.topics.update(topics)


async def configure_connection(conn: Connection) -> None:
    """Every connection reads and writes times in UTC."""
    await conn.execute("SET TIME ZONE 'UTC'")


async def connect(url: str, **kwargs: Any) -> Connection:
    """One connection outside the pool (migrations, the notification listener)."""
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True, **kwargs)
    await configure_connection(conn)
    return conn


class Database:
    """The connection pool of one storage, with the retry policy above."""

    def __init__(
        self,
        url: str,
        taskhub: str,
        channel: str,
        origin: str,
        *,
        min_connections: int,
        max_connections: int,
        retry_seconds: float,
        on_commit: Callable[[set[str]], None],
    ) -> None:
        self.taskhub = taskhub
        self.channel = channel
        self.origin = origin
        self.retry_seconds = retry_seconds
        self._on_commit = on_commit
        self.pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            url,
            min_size=min_connections,
            max_size=max_connections,
            kwargs={"autocommit": True},
            configure=configure_connection,
            # Short waits and short background reconnection: after an outage the pool's own backoff
            # would grow to many seconds, while each retry of ours asks for a connection afresh,
            # and a fresh request makes the pool try to connect at once.
            timeout=min(_CONNECTION_WAIT_SECONDS, max(retry_seconds, 0.5)),
            reconnect_timeout=_RECONNECT_SECONDS,
            name=f"duratask-{taskhub}",
            open=False,
        )

    async def open(self, timeout: float) -> None:
        await self.pool.open(wait=True, timeout=timeout)

    async def close(self) -> None:
        await self.pool.close()

    async def read(self, fn: Callable[[Connection], Awaitable[T]]) -> T:
        """Run a read (statements outside any transaction); retried across connection failures."""
        return await self._retrying(fn, self._read_once, replay_safe=True)

    async def write(self, fn: Callable[[Tx], Awaitable[T]], *, replay_safe: bool) -> T:
        """Run ``fn`` in one transaction, then send its notifications (also in it) and wake this process."""
        once = self._write_once if replay_safe else self._write_once_synced
        return await self._retrying(fn, once, replay_safe=replay_safe)

    async def write_statement(self, fn: Callable[[Tx], Awaitable[T]], *, replay_safe: bool) -> T:
        """Run ``fn``, which executes exactly one statement and notifies nobody, as its own transaction:
        no BEGIN and COMMIT round trips. Any failure may hide a commit (only ``replay_safe`` retries)."""
        return await self._retrying(fn, self._statement_once, replay_safe=replay_safe)

    async def _read_once(self, fn: Callable[[Connection], Awaitable[T]], progress: list[bool]) -> T:
        async with self.pool.connection() as conn:
            return await fn(conn)

    async def _write_once_synced(self, fn: Callable[[Tx], Awaitable[T]], progress: list[bool]) -> T:
        return await self._write_once(fn, progress, sync_before_commit=True)

    async def _write_once(
        self, fn: Callable[[Tx], Awaitable[T]], progress: list[bool], sync_before_commit: bool = False
    ) -> T:
        async with self.pool.connection() as conn, _pipeline(conn) as pipeline:
            tx = Tx(conn, self.taskhub, self.origin)
            async with conn.transaction():
                result = await fn(tx)
                if tx.topics:
                    payloads = notification_payloads(self.origin, tx.topics)
                    await conn.execute(Q.notify, {"channel": self.channel, "payloads": payloads})
                if sync_before_commit and pipeline is not None:
                    # In a pipeline a broken connection shows only when results are awaited: wait
                    # for them before COMMIT goes out, so such a failure is known to be pre-commit
                    # and the write can be retried (one more round trip, for writes not replay-safe).
                    await pipeline.sync()
                progress.append(True)  # from here on, a failure may hide a commit
        if tx.topics:
            self._on_commit(tx.topics)
        return result

    async def _statement_once(self, fn: Callable[[Tx], Awaitable[T]], progress: list[bool]) -> T:
        async with self.pool.connection() as conn:
            tx = Tx(conn, self.taskhub, self.origin)
            progress.append(True)
            result = await fn(tx)
        if tx.topics:
            raise RuntimeError("a single-statement write cannot notify")
        return result

    async def _retrying(
        self,
        fn: Any,
        once: Callable[[Any, list[bool]], Awaitable[T]],
        *,
        replay_safe: bool,
    ) -> T:
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.02
        attempt = 0
        while True:
            committing: list[bool] = []
            try:
                return await once(fn, committing)
            except psycopg.OperationalError as exc:
                if not is_transient(exc) or (committing and not replay_safe) or time.monotonic() >= deadline:
                    raise
                attempt += 1
                # A busy pool is no outage; and one warning per call is enough during one.
                busy = isinstance(exc, PoolTimeout)
                level = logging.DEBUG if busy or attempt > 1 else logging.WARNING
                log.log(level, "PostgreSQL unavailable (%s); retrying in %.2f s", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
