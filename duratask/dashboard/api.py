"""The JSON API under ``/api``: every answer comes from ``DurableTaskClient`` calls, nothing else.

GET  /api/info                      where the dashboard is connected, the status names
GET  /api/instances                 one page of instances (filters: see ``inputs.list_query``)
GET  /api/instances/{id}            one instance with its input, output, custom status and failure
GET  /api/history/{id}              its history, oldest first, timed from the first event
POST /api/{action}/{id}             action: raise-event, terminate, suspend, resume, purge (JSON body)

The instance id is always the rest of the path, so ids may contain ``/`` (sent as ``%2F``).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..client import DurableTaskClient
from ..connection import EmbeddedTarget, parse
from ..models import OrchestrationRuntimeStatus
from . import views
from .errors import BadRequest, NotFound, UnsupportedMediaType, response_for
from .inputs import PurgeBody, RaiseEventBody, ReasonBody, TerminateBody, action_body, list_query

Endpoint = Callable[[Request], Awaitable[Response]]


def answers_errors(endpoint: Endpoint) -> Endpoint:
    """Turn whatever the endpoint raises into the JSON error answer of ``errors.response_for``."""

    @functools.wraps(endpoint)
    async def wrapper(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Exception as exc:  # noqa: BLE001 - every error gets a JSON answer; unexpected ones are logged
            return response_for(exc)

    return wrapper


def where(connection_string: str) -> str:
    """Where the dashboard reads from, without passwords or tokens (which ``parse`` keeps apart)."""
    target = parse(connection_string)
    if isinstance(target, EmbeddedTarget):
        if target.scheme == "postgresql":
            parts = urlsplit(target.location)
            location = (
                f"postgresql://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"
            )
        elif target.scheme == "memory":
            location = "memory://"
        else:
            location = f"sqlite:///{target.location}"
        return f"{location} (task hub {target.taskhub})"
    scheme = "https" if target.secure else "http"
    return f"{scheme}://{target.address} (task hub {target.taskhub})"


# --- actions: one row each, what body they take and which client call they make -----------------


@dataclass(frozen=True)
class Action:
    body_type: type[msgspec.Struct]
    run: Callable[[DurableTaskClient, str, Any], Awaitable[dict[str, Any]]]
    status_code: int = 202  # queued for the instance; it applies them on its next step


async def _raise_event(client: DurableTaskClient, instance_id: str, body: RaiseEventBody) -> dict[str, Any]:
    if not body.name.strip():
        raise BadRequest("event name must not be empty")
    await client.raise_event(instance_id, body.name, body.data)
    return {}


async def _terminate(client: DurableTaskClient, instance_id: str, body: TerminateBody) -> dict[str, Any]:
    await client.terminate_instance(instance_id, body.output, recursive=body.recursive)
    return {}


async def _suspend(client: DurableTaskClient, instance_id: str, body: ReasonBody) -> dict[str, Any]:
    await client.suspend_instance(instance_id, body.reason)
    return {}


async def _resume(client: DurableTaskClient, instance_id: str, body: ReasonBody) -> dict[str, Any]:
    await client.resume_instance(instance_id, body.reason)
    return {}


async def _purge(client: DurableTaskClient, instance_id: str, body: PurgeBody) -> dict[str, Any]:
    result = await client.purge_instance(instance_id, recursive=body.recursive)
    return {"purged_instance_count": result.purged_instance_count}


ACTIONS: dict[str, Action] = {
    "raise-event": Action(RaiseEventBody, _raise_event),
    "terminate": Action(TerminateBody, _terminate),
    "suspend": Action(ReasonBody, _suspend),
    "resume": Action(ReasonBody, _resume),
    "purge": Action(PurgeBody, _purge, status_code=200),
}


# --- endpoints ------------------------------------------------------------------------------------


class DashboardApi:
    """The endpoints over one client (opened and closed by the app's lifespan)."""

    def __init__(self, connection_string: str, client: DurableTaskClient) -> None:
        self.connection_string = connection_string
        self.client = client

    def routes(self) -> list[Route]:
        return [
            Route("/api/info", answers_errors(self.info), methods=["GET"]),
            Route("/api/instances", answers_errors(self.list_instances), methods=["GET"]),
            Route("/api/instances/{instance_id:path}", answers_errors(self.get_instance), methods=["GET"]),
            Route("/api/history/{instance_id:path}", answers_errors(self.get_history), methods=["GET"]),
            Route("/api/{action}/{instance_id:path}", answers_errors(self.act), methods=["POST"]),
            Route("/api/{rest:path}", answers_errors(self.unknown), methods=["GET", "POST"]),
        ]

    async def info(self, request: Request) -> Response:
        return JSONResponse(
            {
                "connection": where(self.connection_string),
                "statuses": [status.name for status in OrchestrationRuntimeStatus],
                "actions": list(ACTIONS),
            }
        )

    async def list_instances(self, request: Request) -> Response:
        params = request.query_params
        query = list_query({key: params.getlist(key) for key in params})
        result = await self.client.get_all_instances(query)
        return JSONResponse(
            {
                "instances": [views.instance_summary(meta) for meta in result.instances],
                "continuation_token": result.continuation_token,
            }
        )

    async def get_instance(self, request: Request) -> Response:
        instance_id = _instance_id(request)
        meta = await self.client.get_instance(instance_id, get_inputs_and_outputs=True)
        if meta is None:
            raise NotFound(f"orchestration instance {instance_id!r} not found")
        return JSONResponse(views.instance_detail(meta))

    async def get_history(self, request: Request) -> Response:
        instance_id = _instance_id(request)
        events = await self.client.get_orchestration_history(instance_id)
        return JSONResponse({"instance_id": instance_id, "events": views.history_view(events)})

    async def act(self, request: Request) -> Response:
        name = request.path_params["action"]
        action = ACTIONS.get(name)
        if action is None:
            raise NotFound(f"unknown action {name!r}; expected one of {', '.join(ACTIONS)}")
        instance_id = _instance_id(request)
        # Only JSON: a cross-site form cannot send it without a CORS preflight, which is never allowed.
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            raise UnsupportedMediaType("send the action's body as JSON (Content-Type: application/json)")
        body = action_body(await request.body(), action.body_type)
        result = await action.run(self.client, instance_id, body)
        return JSONResponse({"instance_id": instance_id, "action": name, **result}, action.status_code)

    async def unknown(self, request: Request) -> Response:
        raise NotFound(f"no API route {request.method} {request.url.path}")


def _instance_id(request: Request) -> str:
    instance_id: str = request.path_params["instance_id"]
    if not instance_id:
        raise BadRequest("missing instance id in the path")
    return instance_id
