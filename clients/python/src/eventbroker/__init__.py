"""Python client of the eventbroker gRPC event broker.

`Client` (blocking) and `AsyncClient` (asyncio) publish events and manage
subscriptions; `Consumer` runs handlers for a subscription's deliveries in a
long-lived process. Failed calls raise `BrokerError` subclasses. The generated
stubs are in `eventbroker.v1`.
"""

from importlib import metadata as _metadata

from eventbroker._batching import PublishBatching
from eventbroker._config import TLSConfig
from eventbroker.aio import AsyncClient, SubscribeStream
from eventbroker.client import Client
from eventbroker.consumer import Consumer, Context
from eventbroker.errors import (
    AlreadyExists,
    BrokerError,
    DeadLetter,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Retry,
    SubscriptionSettingsWarning,
    Terminal,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from eventbroker.types import (
    AckIds,
    AckResult,
    Attempt,
    DeadLetterInfo,
    DeadLetterPage,
    DelayLike,
    DeliveryStatus,
    DurationLike,
    EventInfo,
    EventSpec,
    KeyWait,
    Message,
    PublishResult,
    SeekResult,
    Stats,
    Subscription,
    SubscriptionChanges,
    SubscriptionStats,
)

#: The installed version of this client (the distribution `eventbroker`).
__version__ = _metadata.version("eventbroker")

__all__ = [
    "AckIds",
    "AckResult",
    "AlreadyExists",
    "AsyncClient",
    "Attempt",
    "BrokerError",
    "Client",
    "Consumer",
    "Context",
    "DeadLetter",
    "DeadLetterInfo",
    "DeadLetterPage",
    "DeadlineExceeded",
    "DelayLike",
    "DeliveryStatus",
    "DurationLike",
    "EventInfo",
    "EventSpec",
    "FailedPrecondition",
    "InvalidArgument",
    "KeyWait",
    "Message",
    "NotFound",
    "PermissionDenied",
    "PublishBatching",
    "PublishResult",
    "ResourceExhausted",
    "Retry",
    "SeekResult",
    "Stats",
    "SubscribeStream",
    "Subscription",
    "SubscriptionChanges",
    "SubscriptionSettingsWarning",
    "SubscriptionStats",
    "TLSConfig",
    "Terminal",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
]
