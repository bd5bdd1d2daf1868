"""API keys: who may call what.

A key is `ebk_<id>_<secret>`, sent as `authorization: Bearer <key>`. The
broker stores the id, the scopes, the name patterns and the SHA-256 of the
secret (a random 256-bit secret needs no slow hash), never the secret; the
command line makes keys (`broker keys create`) and shows the secret once.

While no key exists a broker that listens on loopback only runs open. Once
one exists, every call of the broker service needs a valid key with the call's
scope, and names within the key's patterns: the event names it publishes, the
subscriptions it uses. A broker that listens beyond loopback without
`--insecure` never runs open: with no active key (the last one revoked) it
refuses every call until a key is made again. Health and reflection stay open.
Keys are read from the database and kept for `KEY_CACHE_S`, so a key made or
revoked from the command line counts within that time on every broker sharing
the database.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter

from broker.domain import ApiKey, Scope
from broker.errors import permission_denied, resource_exhausted, unauthenticated
from broker.names import matches
from broker.storage.interface import StorageTx

T = TypeVar("T")
Read = Callable[[Callable[[StorageTx], T]], Awaitable[T]]

KEY_PREFIX = "ebk"
#: How long a key (or the fact that none exists) is trusted before it is read again.
KEY_CACHE_S = 2.0
#: What a broker that must not run open answers while no key is active.
NO_ACTIVE_KEY_MESSAGE = (
    "this broker listens beyond loopback and no active API key exists, so it refuses "
    "every call: create one with 'broker keys create NAME --scope ...' on its database "
    "(it counts within seconds), or restart the broker with --insecure"
)


def secret_sha256(secret: str) -> str:
    """The stored form of a key's secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key(
    name: str,
    scopes: Iterable[Scope],
    patterns: Sequence[str],
    now_us: int,
    publish_rate: int | None = None,
) -> tuple[str, ApiKey]:
    """A fresh key: the token to hand out (once) and what to store."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    stored = ApiKey(
        key_id=key_id,
        name=name,
        secret_sha256=secret_sha256(secret),
        scopes=frozenset(scopes),
        patterns=tuple(p.lower() for p in patterns),
        created_at_us=now_us,
        publish_rate=publish_rate,
    )
    return f"{KEY_PREFIX}_{key_id}_{secret}", stored


def parse_token(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    prefix, _, rest = token.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != KEY_PREFIX or not key_id or not secret:
        return None
    return key_id, secret


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The token of an `authorization: Bearer ...` header, if any."""
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


class Authenticator:
    """Checks the key of each call against the keys in the database (cached briefly)."""

    def __init__(
        self,
        read: Read[Any],
        *,
        require_keys: bool = False,
        cache_s: float = KEY_CACHE_S,
        clock_s: Callable[[], float] = time.monotonic,
    ) -> None:
        """Read keys with `read`; with `require_keys`, no active key closes the broker.

        Args:
            read: Runs a function in a read transaction.
            require_keys: Refuse every call while no key is active, instead of
                running open (a broker that listens beyond loopback).
            cache_s: How long what was read is trusted.
            clock_s: A monotonic clock in seconds (injected by tests).

        """
        self._read = read
        self._require_keys = require_keys
        self._cache_s = cache_s
        self._clock_s = clock_s
        self._active: tuple[float, int] | None = None
        self._keys: dict[str, tuple[float, ApiKey | None]] = {}
        self._rates = FixedWindowRateLimiter(MemoryStorage())

    async def enabled(self) -> bool:
        """Whether any key is active (if none, a broker that may run open does)."""
        now = self._clock_s()
        if self._active is None or now - self._active[0] >= self._cache_s:
            count = await self._read(lambda tx: tx.api_key_active_count())
            self._active = (now, count)
        return self._active[1] > 0

    async def authorize(
        self, metadata: Iterable[tuple[str, Any]] | None, scope: Scope
    ) -> ApiKey | None:
        """The caller's key, if it may use `scope`; None when the broker runs open.

        Raises:
            BrokerError: UNAUTHENTICATED for a missing, malformed, unknown or
                revoked key, and for every call while no key is active on a
                broker that requires keys; PERMISSION_DENIED for a key without
                the scope.

        """
        if not await self.enabled():
            if self._require_keys:
                raise unauthenticated(NO_ACTIVE_KEY_MESSAGE, reason="API_KEY_NONE_ACTIVE")
            return None
        token = bearer_token(metadata)
        if token is None:
            raise unauthenticated(
                "this broker needs an API key: send 'authorization: Bearer <key>'"
            )
        parsed = parse_token(token)
        key = await self._key(parsed[0]) if parsed is not None else None
        if (
            parsed is None
            or key is None
            or not hmac.compare_digest(key.secret_sha256, secret_sha256(parsed[1]))
        ):
            raise unauthenticated("the API key is not valid")
        if key.revoked_at_us is not None:
            raise unauthenticated(f"the API key {key.key_id!r} was revoked")
        if scope not in key.scopes:
            have = ", ".join(sorted(key.scopes)) or "none"
            raise permission_denied(
                "SCOPE_MISSING",
                f"the API key {key.key_id!r} lacks the {scope.value!r} scope (it has: {have})",
                scope=scope.value,
            )
        return key

    @staticmethod
    def allow_names(key: ApiKey | None, kind: str, names: Iterable[str]) -> None:
        """Refuse names outside the key's patterns.

        Raises:
            BrokerError: PERMISSION_DENIED naming the first name not allowed.

        """
        if key is None or not key.patterns:
            return
        for name in names:
            if not matches(key.patterns, name.lower()):
                raise permission_denied(
                    "NAME_NOT_ALLOWED",
                    f"the API key {key.key_id!r} may not use {kind} {name!r} "
                    f"(allowed: {', '.join(key.patterns)})",
                    **{kind.replace(" ", "_"): name},
                )

    def allow_publish(self, key: ApiKey | None, events: int) -> None:
        """Count `events` against the key's publish rate, if it has one.

        Raises:
            BrokerError: RESOURCE_EXHAUSTED when the key has used its rate for this second.

        """
        if key is None or key.publish_rate is None:
            return
        limit = RateLimitItemPerSecond(key.publish_rate)
        # A refused call must not use up the window: test first, count only what passes.
        fits = self._rates.test(limit, key.key_id, cost=events)
        if not fits or not self._rates.hit(limit, key.key_id, cost=events):
            raise resource_exhausted(
                "PUBLISH_RATE_EXCEEDED",
                f"the API key {key.key_id!r} may publish at most {key.publish_rate} events "
                "per second (per broker); slow down and retry",
                limit=str(key.publish_rate),
            )

    async def _key(self, key_id: str) -> ApiKey | None:
        now = self._clock_s()
        cached = self._keys.get(key_id)
        if cached is None or now - cached[0] >= self._cache_s:
            key = await self._read(lambda tx: tx.api_key_get(key_id))
            if len(self._keys) > 10_000:
                self._keys.clear()
            cached = (now, key)
            self._keys[key_id] = cached
        return cached[1]
