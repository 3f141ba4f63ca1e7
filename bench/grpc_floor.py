"""What gRPC alone costs a Python server on this machine: the floor under any scheduler server.

``python -m bench.grpc_floor`` starts an empty echo server (a handler that returns its request,
no work at all), once with the synchronous gRPC server and once with grpc.aio, each in a process
of its own, and measures from ``/proc`` the server's CPU per unary call and per message of a
server stream (``--in-flight``: calls at a time, 1 by default). It then prices what the official SDKs
send for one chain3 instance (a client start and wait; four orchestrator and three activity
completions; seven work items streamed): CPU that every Python gRPC server spends whatever it
does, the SDK's in-memory backend included.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from typing import Any

import grpc

from bench.pg import process_cpu_s
from bench.systems.grpc_path import free_port

SERVICE = "floor.Echo"
PAYLOAD = b"x" * 300  # about a small work item or completion
#: One chain3 instance of the official SDK: StartInstance, WaitForInstanceCompletion, four
#: CompleteOrchestratorTask, three CompleteActivityTask; seven work items on the stream.
CHAIN3_UNARY_CALLS = 9
CHAIN3_STREAMED_ITEMS = 7


def _same(data: bytes) -> bytes:
    return data


def _echo(request: bytes, _context: Any) -> bytes:
    return request


def _stream(request: bytes, _context: Any) -> Iterator[bytes]:
    for _ in range(int(request)):
        yield PAYLOAD


async def _echo_async(request: bytes, _context: Any) -> bytes:
    return request


async def _stream_async(request: bytes, _context: Any) -> AsyncIterator[bytes]:
    for _ in range(int(request)):
        yield PAYLOAD


def _handlers(echo: Any, stream: Any) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo, _same, _same),
            "Stream": grpc.unary_stream_rpc_method_handler(stream, _same, _same),
        },
    )


def _serve_sync(port: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=10))
    server.add_generic_rpc_handlers((_handlers(_echo, _stream),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("READY", flush=True)
    sys.stdin.read()  # until the parent closes it
    server.stop(None)


async def _serve_aio(port: int) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_handlers(_echo_async, _stream_async),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("READY", flush=True)
    await asyncio.to_thread(sys.stdin.read)
    await server.stop(None)


async def _measure(
    pid: int, port: int, calls: int, streamed: int, in_flight: int
) -> tuple[float, float, float]:
    """(server CPU µs per unary call, per streamed message, client-seen ms per call), with
    ``in_flight`` calls at a time."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        echo = channel.unary_unary(f"/{SERVICE}/Echo", request_serializer=_same, response_deserializer=_same)
        stream = channel.unary_stream(
            f"/{SERVICE}/Stream", request_serializer=_same, response_deserializer=_same
        )
        for _ in range(100):  # warm up
            await echo(PAYLOAD)
        cpu0, wall0 = process_cpu_s(pid), time.perf_counter()
        for _ in range(calls // in_flight):
            await asyncio.gather(*(echo(PAYLOAD) for _ in range(in_flight)))
        unary_cpu, rtt = process_cpu_s(pid) - cpu0, time.perf_counter() - wall0
        cpu0 = process_cpu_s(pid)
        async for _ in stream(str(streamed).encode()):
            pass
        stream_cpu = process_cpu_s(pid) - cpu0
    return unary_cpu / calls * 1e6, stream_cpu / streamed * 1e6, rtt / calls * 1e3


def _run(kind: str, calls: int, streamed: int, in_flight: int) -> tuple[float, float, float]:
    port = free_port()
    command = [sys.executable, "-m", "bench.grpc_floor", "--serve", kind, "--port", str(port)]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as server:
        assert server.stdout is not None and server.stdin is not None
        if server.stdout.readline().strip() != "READY":
            raise RuntimeError(f"the {kind} echo server did not start")
        try:
            return asyncio.run(_measure(server.pid, port, calls, streamed, in_flight))
        finally:
            server.stdin.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_floor", description=__doc__)
    parser.add_argument("--calls", type=int, default=3000, help="unary calls per measurement")
    parser.add_argument("--streamed", type=int, default=3000, help="messages of the server stream")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=1, help="unary calls at a time")
    parser.add_argument("--serve", choices=("sync", "aio"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve == "sync":
        _serve_sync(args.port)
        return 0
    if args.serve == "aio":
        asyncio.run(_serve_aio(args.port))
        return 0
    print(
        f"empty gRPC echo server, {args.calls} unary calls {args.in_flight} at a time, "
        f"{args.streamed} streamed messages; medians of {args.repeat}"
    )
    for kind in ("sync", "aio"):
        runs = [_run(kind, args.calls, args.streamed, args.in_flight) for _ in range(args.repeat)]
        unary, streamed, rtt = (statistics.median(column) for column in zip(*runs, strict=True))
        chain3_ms = (CHAIN3_UNARY_CALLS * unary + CHAIN3_STREAMED_ITEMS * streamed) / 1000
        print(
            f"{kind:>4} server: {unary:6.0f} µs CPU per unary call, {streamed:5.0f} µs per streamed "
            f"message, {rtt:.2f} ms per call; one chain3 instance of the official SDK "
            f"({CHAIN3_UNARY_CALLS} calls, {CHAIN3_STREAMED_ITEMS} work items): {chain3_ms:.1f} ms CPU"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
