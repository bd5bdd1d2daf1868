"""The broker's HTTP side: JSON ingest for systems without gRPC, metrics, a health check.

    POST /v1/events   one event object or an array of them, as the `Event`
                      message in JSON (`{"name": "user.joined", "data": {...}}`);
                      the same bearer key, validation, limits and response as
                      `BatchPublish` (`{"results": [{"event_id": ..., "status": ...}]}`)
    GET  /metrics     Prometheus text format (admin scope once keys exist)
    GET  /healthz     200 while the broker serves

Errors are JSON too, with the status a gRPC client would get mapped to HTTP
(`INVALID_ARGUMENT` 400, `UNAUTHENTICATED` 401, `PERMISSION_DENIED` 403,
`RESOURCE_EXHAUSTED` 413 for sizes and 429 for rates, `UNAVAILABLE` 503) and
the same reason and field violations.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from broker import logs
from broker.api.servicer import EventBrokerServicer, as_broker_error
from broker.domain import Scope
from broker.errors import BrokerError, FieldViolation, internal, invalid_argument
from eventbroker.v1 import broker_pb2 as pb

_log = logging.getLogger(__name__)

HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 412,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
}
SIZE_REASONS = {"SIZE_LIMIT_EXCEEDED"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(error: BrokerError) -> web.Response:
    """The JSON body and HTTP status of a broker error."""
    status = HTTP_STATUS.get(error.code, 500)
    if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.reason in SIZE_REASONS:
        status = 413
    body = {
        "error": {
            "code": error.code.name,
            "reason": error.reason,
            "message": error.message,
            "field_violations": [
                {"field": v.field, "description": v.description} for v in error.violations
            ],
        }
    }
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return web.json_response(body, status=status, headers=headers)


def build_http_app(servicer: EventBrokerServicer) -> web.Application:
    """The aiohttp application over the same servicer the gRPC server uses."""
    settings = servicer.settings
    app = web.Application(
        client_max_size=settings.batch_max_bytes + 1024 * 1024,
        middlewares=[_errors],
    )

    async def ingest(request: web.Request) -> web.Response:
        key = await servicer.auth.authorize(request.headers.items(), Scope.PUBLISH)
        try:
            body = await request.json(loads=_strict_loads)
        except ValueError as error:
            raise invalid_argument([FieldViolation("body", f"is not JSON: {error}")]) from None
        items = body if isinstance(body, list) else [body]
        events = []
        for index, item in enumerate(items):
            field = f"events[{index}]" if isinstance(body, list) else "event"
            if not isinstance(item, dict):
                raise invalid_argument([FieldViolation(field, "must be a JSON object")])
            try:
                events.append(json_format.ParseDict(item, pb.Event()))
            except json_format.ParseError as error:
                raise invalid_argument([FieldViolation(field, str(error))]) from None
        response = await servicer.publish_batch(key, pb.BatchPublishRequest(events=events))
        return web.json_response(
            json_format.MessageToDict(response, preserving_proto_field_name=True)
        )

    async def metrics(request: web.Request) -> web.Response:
        await servicer.auth.authorize(request.headers.items(), Scope.ADMIN)
        engine = servicer.engine
        counts, events = await engine.counts(None)
        consumers = {c.subscription: engine.consumer_count(c.subscription) for c in counts}
        engine.metrics.set_counts(counts, events, consumers, engine.clock())
        return web.Response(
            body=generate_latest(engine.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app.router.add_post("/v1/events", ingest)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Broker errors, storage errors and surprises as JSON errors; aiohttp's own pass."""
    logs.request_id.set(logs.request_id_from(request.headers.items()) or "-")
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as error:
        mapped = as_broker_error(error)
        if mapped is None:
            _log.exception("%s %s failed", request.method, request.path)
            mapped = internal(f"{request.method} {request.path} failed inside the broker")
        return error_response(mapped)


def _strict_loads(text: str) -> Any:
    """JSON without NaN or Infinity, which no event may carry."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)
