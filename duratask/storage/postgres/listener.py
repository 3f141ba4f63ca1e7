"""Wake-ups across processes and machines: PostgreSQL LISTEN/NOTIFY into the in-process Notifier.

Writers send ``pg_notify(channel, '{"origin": ..., "topics": ["orchestrations", "instance:ID"]}')``
inside their transaction, so listeners hear of a change only once it is committed. Each storage keeps one
connection of its own that LISTENs on its task hub's channel and hands the topics to its
``Notifier``. When that connection breaks (server restart, network), it reconnects by itself and
then wakes every worker once, since notifications sent while it was away are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable

import msgspec
import psycopg
from psycopg import sql

from ...notify import ACTIVITIES, ORCHESTRATIONS
from .db import Connection, Notification, connect

log = logging.getLogger("duratask.storage.postgres")

_decoder = msgspec.json.Decoder(Notification)

#: libpq keepalives, so a listener behind a dead network notices instead of waiting forever.
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}


def channel_for(taskhub: str) -> str:
    """The NOTIFY channel of a task hub: a fixed-length identifier whatever the hub's name."""
    return "duratask_" + hashlib.sha256(taskhub.encode()).hexdigest()[:24]


class NotificationListener:
    """One LISTENing connection, reconnecting with backoff until ``stop``."""

    def __init__(
        self,
        url: str,
        channel: str,
        origin: str,
        deliver: Callable[..., None],
        reconnected: Callable[[], None] | None = None,
    ) -> None:
        self._url = url
        self._channel = channel
        self._origin = origin
        self._deliver = deliver
        self._reconnected = reconnected or (lambda: deliver(ORCHESTRATIONS, ACTIVITIES))
        self._task: asyncio.Task[None] | None = None
        self._conn: Connection | None = None
        #: Set while a connection is listening.
        self.listening = asyncio.Event()
        #: How many connections have started listening so far (1 after ``start``; more after reconnects).
        self.connections = 0

    async def start(self) -> None:
        """Connect and LISTEN before returning (a change committed after this is heard)."""
        self._conn = await self._listen()
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"duratask-listen-{self._channel}"
        )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._close()

    async def _listen(self) -> Connection:
        conn = await connect(self._url, **_KEEPALIVES)
        try:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
        except BaseException:
            await conn.close()
            raise
        self.connections += 1
        self.listening.set()
        return conn

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        self.listening.clear()
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _run(self) -> None:
        delay = 0.05
        while True:
            try:
                if self._conn is None:
                    self._conn = await self._listen()
                    delay = 0.05
                    # Whatever was notified while we were away is lost: let every worker and every
                    # waiter for an instance look once.
                    self._reconnected()
                async for notification in self._conn.notifies():
                    self._handle(notification.payload)
            except psycopg.Error as exc:
                log.warning(
                    "PostgreSQL listener lost its connection (%s); reconnecting in %.2f s", exc, delay
                )
            await self._close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _handle(self, payload: str) -> None:
        try:
            notification = _decoder.decode(payload)
        except msgspec.DecodeError:
            log.warning("ignoring a malformed notification on %s: %r", self._channel, payload[:200])
            return
        if notification.origin != self._origin:
            self._deliver(*notification.topics)
