"""The broker's HTTP side: JSON ingest for systems without gRPC, metrics, a health check.

    POST /v1/events   one event object or an array of them, as the `Event`
                      message in JSON (`{"name": "user.joined", "data": {...}}`);
                      the same bearer key, validation, limits and response as
                      `BatchPublish` (`{"results": [{"event_id": ..., "status": ...}]}`)
    POST /v1/rpc/<Method>
                      any unary RPC of the service, its request and response in
                      JSON (`/v1/rpc/GetStats`, `/v1/rpc/RedriveDeadLetters`, ...),
                      through the very servicer the gRPC server runs: the same keys,
                      checks and errors; the dashboard speaks this
    GET  /            the live dashboard (see `broker/api/dashboard.html`)
    GET  /metrics     Prometheus text format (admin scope once keys exist)
    GET  /healthz     200 while the broker serves, 503 once it is shutting down

Errors are JSON too, with the status a gRPC client would get mapped to HTTP
(`INVALID_ARGUMENT` 400, `UNAUTHENTICATED` 401, `PERMISSION_DENIED` 403,
`RESOURCE_EXHAUSTED` 413 for sizes and 429 for rates, `UNAVAILABLE` 503) and
the same reason and field violations.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2

from broker import config, logs
from broker.api import convert
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
        body = await _json_body(request)
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
        engine.metrics.set_counts(counts, events, engine.clock())
        body, content_type = engine.metrics.exposition(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(request: web.Request) -> web.Response:
        if servicer.engine.draining:  # shutting down: only held deliveries are settled
            return web.Response(status=503, text="shutting down\n")
        return web.Response(text="ok\n")

    async def rpc(request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if method not in UNARY_METHODS:
            raise web.HTTPNotFound(text=f"no unary RPC {method!r}")
        request_class = UNARY_METHODS[method]
        body = await _json_body(request) if request.can_read_body else {}
        try:
            message = json_format.ParseDict(body, request_class())
        except json_format.ParseError as error:
            raise invalid_argument([FieldViolation("body", str(error))]) from None
        context = _HttpCallContext(request)
        try:
            response = await getattr(servicer, method)(message, context)
        except _AbortedError as aborted:
            return error_response(aborted.error)
        return web.json_response(
            json_format.MessageToDict(
                response,
                preserving_proto_field_name=True,
                always_print_fields_with_no_presence=True,
            )
        )

    async def dashboard(request: web.Request) -> web.Response:
        return web.Response(text=DASHBOARD_HTML, content_type="text/html")

    app.router.add_post("/v1/events", ingest)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/v1/rpc/{method}", rpc)
    app.router.add_get("/", dashboard)
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


def _unary_methods() -> dict[str, Any]:
    """The request class of each unary RPC, by name."""
    service = pb.DESCRIPTOR.services_by_name["EventBrokerService"]
    return {
        m.name: getattr(pb, m.input_type.name) for m in service.methods if not m.server_streaming
    }


UNARY_METHODS = _unary_methods()
DASHBOARD_HTML = (Path(__file__).parent / "dashboard.html").read_text()


class _AbortedError(Exception):
    """A servicer method ended the call with an error status."""

    def __init__(self, error: BrokerError) -> None:
        super().__init__(error.message)
        self.error = error


class _HttpCallContext:
    """What a unary servicer method needs of a gRPC call, for one HTTP request."""

    def __init__(self, request: web.Request) -> None:
        self._request = request

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return [(k.lower(), v) for k, v in self._request.headers.items()]

    def peer(self) -> str:
        return f"http:{self._request.remote}"

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
    ) -> None:
        error = BrokerError(code, code.name, details)
        for key, value in trailing_metadata or ():
            if key == "grpc-status-details-bin":
                error = _from_status(code, details, value)
        raise _AbortedError(error)


def _from_status(code: grpc.StatusCode, message: str, raw: bytes) -> BrokerError:
    """A BrokerError back from the google.rpc.Status the servicer sent."""
    status = status_pb2.Status.FromString(raw)
    reason, violations = code.name, []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(info):
            reason = info.reason
        elif detail.Unpack(bad):
            violations = [FieldViolation(v.field, v.description) for v in bad.field_violations]
    return BrokerError(code, reason, message, violations)


async def _json_body(request: web.Request) -> Any:
    """The request's JSON body, or INVALID_ARGUMENT naming the body."""
    try:
        return await request.json(loads=_strict_loads)
    except ValueError as error:
        raise invalid_argument([FieldViolation("body", f"is not JSON: {error}")]) from None


def _strict_loads(text: str) -> Any:
    """JSON without NaN or Infinity, which no event may carry, and not nested too deep.

    The depth is measured before parsing, so that no parser recursion can fail:
    the body may nest somewhat deeper than event data (`config.JSON_BODY_DEPTH_MAX`),
    for the request around it; the data itself is held to its limit
    (`config.JSON_DEPTH_MAX`) when it is converted, naming its field.

    Raises:
        BrokerError: INVALID_ARGUMENT naming the body and the limit, when too deep.
        ValueError: The text is not JSON.

    """
    limit = config.JSON_BODY_DEPTH_MAX
    if convert.json_text_deeper_than(text, limit):
        raise invalid_argument(
            [
                FieldViolation(
                    "body",
                    f"nested more than {limit} levels deep; in event data "
                    f"{convert.JSON_DEPTH_RULE}",
                )
            ]
        )

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)
