"""duratask on PostgreSQL with 4 worker processes (see postgres_duratask.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bench.driver import Params
from bench.systems.postgres_duratask import PostgresDurataskDriver, open_multiprocess_driver


@asynccontextmanager
async def open_driver(params: Params) -> AsyncIterator[PostgresDurataskDriver]:
    async with open_multiprocess_driver(params, workers=4) as driver:
        yield driver
