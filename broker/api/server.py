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
MAX_CONCURRENT_STREAMS = 1000


def build_server(
    engine: DeliveryEngine, settings: Settings, servicer: EventBrokerServicer | None = None
) -> tuple[aio.Server, health.aio.HealthServicer]:
    """A gRPC server with the broker, reflection and health services (not started)."""
    limit = settings.grpc_max_message_bytes
    server = aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
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
