"""One thread that owns the SQLite connection and runs every statement, fed by a queue.

Callers on any event loop hand it a function; it runs the function on its connection and resolves
the caller's future with ``loop.call_soon_threadsafe``, so an event loop with other work does not
wait on the disk, and concurrent callers are serialized without locks.

Write functions that are queued together share one ``BEGIN IMMEDIATE`` ... ``COMMIT`` (one fsync),
each inside its own savepoint so that one raising rolls back only itself. Notifications go out
after the commit, so a woken waiter always sees the change.

One exception to the hand-off: a quick call (a read of one instance, a lease, a completion, an
episode's commit, a start: work of bounded, small size) made while the thread is idle (nothing
queued, its connection lock free) runs at once on the caller's thread, the way the thread would
have run it. A lone instance's step then costs no thread switches (a quarter less latency for
one instance at a time); the price is that the caller's event loop waits out that commit's fsync,
which only happens when the storage had nothing else to do. While the thread is busy everything
queues (group commit pays there), and calls of unbounded size (purges, pages, histories, imports)
always go to the thread. A call that would wait for another process's write lock goes to the
thread instead of stalling the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ...notify import Notifier
from .schema import BUSY_TIMEOUT_MS

T = TypeVar("T")

logger = logging.getLogger(__name__)

#: Upper bound on writes coalesced into one transaction (keeps any single commit short).
MAX_COALESCED_WRITES = 256
#: Not a notifier topic: the mark of a transaction that queued a message visible only later.
_DELAYED = "\x00delayed"


class Tx:
    """What a storage function sees: the connection, the hub, one clock reading, topics to notify."""

    __slots__ = ("conn", "now", "taskhub", "topics")

    def __init__(self, conn: sqlite3.Connection, taskhub: str) -> None:
        self.conn = conn
        self.taskhub = taskhub
        #: Microseconds since the epoch, read once so a whole operation agrees on "now".
        self.now = time.time_ns() // 1000
        self.topics: set[str] = set()

    def notify(self, *topics: str) -> None:
        """Wake waiters of ``topics`` once the transaction has committed."""
        self.topics.update(topics)

    def queued_for_later(self) -> None:
        """Say that a message visible only after ``now`` was queued (a timer, a scheduled start):
        the storage's idea of when the next message becomes visible is out of date."""
        self.topics.add(_DELAYED)


class _Job(Generic[T]):
    __slots__ = ("fn", "future", "loop", "sync", "write")

    def __init__(
        self,
        fn: Callable[[Tx], T],
        write: bool,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[T],
        sync: bool = True,
    ) -> None:
        self.fn = fn
        self.write = write
        self.sync = sync
        self.loop = loop
        self.future = future

    def settle(self, result: Any, error: BaseException | None) -> None:
        try:
            self.loop.call_soon_threadsafe(_settle, self.future, result, error)
        except RuntimeError:  # the caller's event loop is closed: nobody is waiting any more
            pass


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


_STOP = object()


class SqliteRunner:
    """Owns one connection on one thread. ``start`` connects; ``call`` runs work; ``stop`` closes."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        taskhub: str,
        notifier: Notifier,
        name: str,
        *,
        durable: bool = True,
        watch_interval: float | None = None,
        on_delayed: Callable[[], None] | None = None,
    ) -> None:
        self._connect = connect
        #: Called on this thread after a commit that queued a message for later (``Tx.queued_for_later``)
        #: and when another process committed (it may have).
        self._on_delayed = on_delayed
        self._durable = durable
        #: Current ``PRAGMA synchronous`` of the connection: FULL for durable commits, else NORMAL.
        self._synced = durable
        #: How often to look for commits by other processes (``PRAGMA data_version``); None: never.
        self._watch_interval = watch_interval
        self._data_version: int | None = None
        self._last_watch = 0.0
        self._taskhub = taskhub
        self._notifier = notifier
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        #: Held by whoever uses the connection: the thread for a batch, or a caller running inline.
        self._conn_lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._stopping = False
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._stopped: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._pid = os.getpid()

    def start(self) -> None:
        self._thread.start()

    async def wait_ready(self) -> None:
        """Return once connected and migrated; raise what connecting raised."""
        await asyncio.shield(asyncio.wrap_future(self._ready))

    async def call(self, fn: Callable[[Tx], T], *, write: bool, sync: bool = True, quick: bool = False) -> T:
        """Run ``fn`` on the connection thread; writes run inside a transaction.

        ``sync=False`` marks a write that need not reach the disk before it returns (leases,
        activity results): it becomes durable with the next synced commit, which the write-ahead
        log orders after it, and losing it to a power cut only means the work is done again.
        ``quick`` marks a call of bounded, small cost (one instance, one batch of work items): it
        may run on the caller's thread when this one is idle (see the module's docstring).
        """
        if os.getpid() != self._pid:
            # A forked child inherits this object but not its thread: fail instead of waiting forever.
            raise RuntimeError("this SQLite storage was opened in the parent process; open a new one here")
        if quick and self._queue.empty() and self._conn_lock.acquire(False):
            try:
                ran, result = self._run_inline(fn, write, sync)
            finally:
                self._conn_lock.release()
            if ran:
                await asyncio.sleep(0)  # still a suspension point, as callers of ``await`` expect
                return result  # type: ignore[return-value]  # ran: fn's own result
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if self._stopping:
                raise RuntimeError("the SQLite storage is closed")
            self._queue.put(_Job(fn, write, loop, future, sync))
        return await future

    def _run_inline(self, fn: Callable[[Tx], T], write: bool, sync: bool) -> tuple[bool, T | None]:
        """Run ``fn`` on the caller's thread (the connection lock held); ``(False, None)`` when it
        must be queued after all: closed or closing, or another process holds the write lock
        (waiting for it here would block the caller's event loop)."""
        conn = self._conn
        if conn is None or self._stopping:
            return False, None
        tx = Tx(conn, self._taskhub)
        if not write:
            return True, fn(tx)
        self._set_synced(conn, sync)
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:  # busy: let the thread wait for the lock
            return False, None
        finally:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        try:
            result = fn(tx)
            conn.execute("COMMIT")
        except BaseException:
            _rollback_quietly(conn)
            raise
        self._publish(tx.topics)
        return True, result

    async def stop(self) -> None:
        """Finish the work already queued, close the connection, end the thread."""
        with self._lock:
            if not self._stopping:
                self._stopping = True
                self._queue.put(_STOP)
        if self._thread.ident is None or os.getpid() != self._pid:  # never started, or not in this process
            return
        await asyncio.shield(asyncio.wrap_future(self._stopped))

    # --- the thread -------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:  # noqa: BLE001 - handed to whoever awaits wait_ready()
            self._ready.set_exception(exc)
            self._stopped.set_result(None)
            return
        self._conn = conn
        if self._watch_interval is not None:
            self._watch_other_processes(conn)  # the baseline: commits from now on wake waiters
        self._ready.set_result(None)
        try:
            self._serve(conn)
        finally:
            try:
                with self._conn_lock:
                    self._conn = None
                    conn.close()
            finally:
                self._stopped.set_result(None)

    def _serve(self, conn: sqlite3.Connection) -> None:
        while True:
            try:
                first = self._queue.get(timeout=self._watch_interval)
            except queue.Empty:
                with self._conn_lock:
                    self._watch_other_processes(conn)
                continue
            batch = [first]
            while len(batch) < MAX_COALESCED_WRITES:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            with self._conn_lock:
                if not self._serve_batch(conn, batch):
                    return

    def _serve_batch(self, conn: sqlite3.Connection, batch: list[Any]) -> bool:
        """Run one batch (the connection lock held); ``False`` once told to stop."""
        if self._watch_interval is not None and time.monotonic() - self._last_watch > self._watch_interval:
            self._watch_other_processes(conn)
        try:
            return self._run_batch(conn, batch)
        except Exception as exc:  # a bug here must not leave callers waiting forever
            logger.exception("SQLite storage thread failed to run a batch")
            _rollback_quietly(conn)
            for job in batch:
                if job is not _STOP:
                    job.settle(None, exc)  # jobs already settled ignore this
            return _STOP not in batch

    def _run_batch(self, conn: sqlite3.Connection, batch: list[Any]) -> bool:
        """Run jobs in order, consecutive writes in one transaction. ``False`` once told to stop."""
        writes: list[_Job[Any]] = []
        for item in batch:
            if item is _STOP:
                self._run_writes(conn, writes)
                return False
            if item.write:
                writes.append(item)
                continue
            self._run_writes(conn, writes)
            writes = []
            self._run_read(conn, item)
        self._run_writes(conn, writes)
        return True

    def _run_read(self, conn: sqlite3.Connection, job: _Job[Any]) -> None:
        if job.future.cancelled():
            return
        try:
            result = job.fn(Tx(conn, self._taskhub))
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller
            job.settle(None, exc)
        else:
            job.settle(result, None)

    def _watch_other_processes(self, conn: sqlite3.Connection) -> None:
        """Wake every waiter when another process committed: its change may be what they wait for."""
        self._last_watch = time.monotonic()
        try:
            (version,) = conn.execute("PRAGMA data_version").fetchone()
        except sqlite3.Error:
            logger.debug("PRAGMA data_version failed", exc_info=True)
            return
        if self._data_version is not None and version != self._data_version:
            if self._on_delayed is not None:
                self._on_delayed()
            self._notifier.notify_all()
        self._data_version = version

    def _set_synced(self, conn: sqlite3.Connection, synced: bool) -> None:
        synced = synced and self._durable
        if synced != self._synced:  # only outside a transaction, which is where this runs
            conn.execute(f"PRAGMA synchronous = {'FULL' if synced else 'NORMAL'}")
            self._synced = synced

    def _run_writes(self, conn: sqlite3.Connection, jobs: list[_Job[Any]]) -> None:
        jobs = [job for job in jobs if not job.future.cancelled()]
        if not jobs:
            return
        outcomes: list[tuple[_Job[Any], Any, BaseException | None, set[str]]] = []
        try:
            self._set_synced(conn, any(job.sync for job in jobs))
            conn.execute("BEGIN IMMEDIATE")
            for job in jobs:
                outcomes.append(self._run_in_savepoint(conn, job))
            conn.execute("COMMIT")
        except BaseException as exc:  # the transaction as a whole failed: so did every job in it
            logger.debug("SQLite write transaction failed", exc_info=True)
            _rollback_quietly(conn)
            for job in jobs:
                job.settle(None, exc)
            return
        self._publish(set().union(*(job_topics for _, _, error, job_topics in outcomes if error is None)))
        for job, result, error, _ in outcomes:
            job.settle(result, error)

    def _publish(self, topics: set[str]) -> None:
        """After a commit: wake the waiters of ``topics`` (and note a delayed message)."""
        if _DELAYED in topics:
            topics.discard(_DELAYED)
            if self._on_delayed is not None:
                self._on_delayed()
        if topics:
            self._notifier.notify(*topics)

    def _run_in_savepoint(
        self, conn: sqlite3.Connection, job: _Job[Any]
    ) -> tuple[_Job[Any], Any, BaseException | None, set[str]]:
        tx = Tx(conn, self._taskhub)
        conn.execute("SAVEPOINT job")
        try:
            result = job.fn(tx)
        except Exception as exc:  # noqa: BLE001 - raised again in the caller
            # Undo this job only; a failure that ended the whole transaction propagates instead.
            conn.execute("ROLLBACK TO job")
            conn.execute("RELEASE job")
            return job, None, exc, set()
        conn.execute("RELEASE job")
        return job, result, None, tx.topics


def _rollback_quietly(conn: sqlite3.Connection) -> None:
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:  # already rolled back by SQLite itself
        logger.debug("ROLLBACK failed", exc_info=True)
