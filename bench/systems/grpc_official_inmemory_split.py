"""The official `durabletask` Python SDK against its own in-memory backend (durabletask.testing),
with the client in the benchmark process and the worker in a process of its own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bench.driver import Params
from bench.systems.grpc_official import OfficialSdkDriver, open_official_driver
from bench.systems.grpc_path import in_memory_backend_command


@asynccontextmanager
async def open_driver(params: Params) -> AsyncIterator[OfficialSdkDriver]:
    async with open_official_driver(params, in_memory_backend_command, worker_apart=True) as driver:
        yield driver
