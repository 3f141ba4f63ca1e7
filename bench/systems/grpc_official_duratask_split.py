"""The official `durabletask` Python SDK against `duratask serve` (durable SQLite), with the client
in the benchmark process and the worker in a process of its own, as deployments run them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bench.driver import Params
from bench.systems.grpc_official import OfficialSdkDriver, open_official_driver
from bench.systems.grpc_path import duratask_serve_command


@asynccontextmanager
async def open_driver(params: Params) -> AsyncIterator[OfficialSdkDriver]:
    async with open_official_driver(
        params, lambda port: duratask_serve_command(params.workdir, port), worker_apart=True
    ) as driver:
        yield driver
