"""The gRPC server: the broker service, reflection (v1alpha and v1) and health.

grpcio-reflection serves only `grpc.reflection.v1alpha`; the v1 service is the
same protocol under another name, so the same servicer is registered under both
(newer grpcurl and Postman ask for v1 first).
"""

from __future__ import annotations

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from broker.api.servicer import EventBrokerServicer, add_to_server
from broker.config import Settings
from broker.engine.engine import DeliveryEngine
from eventbroker.v1 import broker_pb2 as pb

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EventBrokerService"].full_name
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
KEEPALIVE_MIN_PING_MS = 10_000
#: HTTP/2 streams a connection may open beyond its Subscribe streams: room for unary
#: calls beside a connection full of streams, and for a Subscribe over the limit to
#: reach the servicer and be refused by name instead of waiting in the client's queue.
UNARY_STREAMS_PER_CONNECTION = 100
#: Calls, beyond the Subscribe streams the broker admits, that grpc core may hold
#: received but not yet taken in by the event loop.
PENDING_UNARY_CALLS = 10_000
#: How long grpc core keeps a received call the event loop has not yet taken in
#: before it drops it with a bare CANCELLED (`grpc.server_max_unrequested_time_in_server`,
#: default 30 s). A burst of thousands of Subscribes is taken in at one or two hundred a
#: second on two cores (each reads its subscription), so 30 s is not enough for
#: `max_streams` of them; a unary call carries its own deadline anyway.
PENDING_CALL_MAX_WAIT_S = 300


def build_server(
    engine: DeliveryEngine, settings: Settings, servicer: EventBrokerServicer | None = None
) -> tuple[aio.Server, health.aio.HealthServicer]:
    """A gRPC server with the broker, reflection and health services (not started)."""
    limit = settings.grpc_max_message_bytes
    pending = pending_calls_max(settings)
    server = aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.max_concurrent_streams", http2_streams_max(settings)),
            ("grpc.server.max_pending_requests", pending),
            ("grpc.server.max_pending_requests_hard_limit", pending),
            ("grpc.server_max_unrequested_time_in_server", PENDING_CALL_MAX_WAIT_S),
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_MIN_PING_MS),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.so_reuseport", int(settings.reuse_port)),
        ]
    )
    add_to_server(servicer or EventBrokerServicer(engine), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME, REFLECTION_V1)
    reflection_servicer = reflection.aio.ReflectionServicer(names)
    reflection_pb2_grpc_add(reflection_servicer, server)
    return server, health_servicer


def http2_streams_max(settings: Settings) -> int:
    """HTTP/2 streams one connection may hold open (`grpc.max_concurrent_streams`).

    Above `max_streams_per_connection`, so that the servicer, not HTTP/2, is the
    limit a Subscribe meets: at the HTTP/2 limit a client queues the stream without
    a word, and every unary call behind it, while the servicer answers
    RESOURCE_EXHAUSTED naming `--max-streams-per-connection`.
    """
    return settings.max_streams_per_connection + UNARY_STREAMS_PER_CONNECTION


def pending_calls_max(settings: Settings) -> int:
    """Calls grpc core may hold received but not yet started (both pending-request limits).

    The asyncio server takes calls in one at a time on its event loop, so a burst
    (thousands of consumers reconnecting together) waits in core's pending queue.
    Past `grpc.server.max_pending_requests` (default 1,000) core drops arriving
    calls at random, and at the hard limit (default 3,000) all of them, each with a
    bare CANCELLED and nothing logged. With both limits at `max_streams` plus room
    for unary calls, every Subscribe the broker could admit waits its turn and then
    attaches or is refused by name; the soft limit equal to the hard one turns the
    random early drop off.
    """
    return settings.max_streams + PENDING_UNARY_CALLS


def reflection_pb2_grpc_add(
    servicer: reflection.aio.ReflectionServicer, server: aio.Server
) -> None:
    """Serve reflection under its v1alpha and v1 names."""
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    for name in (reflection.SERVICE_NAME, REFLECTION_V1):
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": handler}),)
        )


async def set_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    """Report the broker service (and the server as a whole) as serving or not."""
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, status)
