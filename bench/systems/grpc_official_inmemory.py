"""The official `durabletask` Python SDK against its own in-memory backend (durabletask.testing) in
its own process: the durabletask system, with the server's CPU reported apart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bench.driver import Params
from bench.systems.grpc_official import OfficialSdkDriver, open_official_driver
from bench.systems.grpc_path import in_memory_backend_command


@asynccontextmanager
async def open_driver(params: Params) -> AsyncIterator[OfficialSdkDriver]:
    async with open_official_driver(params, in_memory_backend_command) as driver:
        yield driver
