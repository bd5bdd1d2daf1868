"""Which consumer handlers an event name goes to: patterns matched as the broker matches filters.

A pattern is an event name whose segments (split on `.`) may be `*` (exactly
one segment) or, as the last segment, `>` (one or more remaining segments);
matching ignores case.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Distinct event names whose matching routes are remembered (names may embed ids).
NAME_CACHE_SIZE = 4096


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A regular expression matching whole, lower-cased names against `pattern`.

    Raises:
        ValueError: The pattern is empty, has an empty segment, or has `>` before the end.

    """
    segments = pattern.lower().split(".")
    parts = []
    for index, segment in enumerate(segments):
        if not segment:
            raise ValueError(f"pattern {pattern!r} has an empty segment")
        if segment == "*":
            parts.append(r"[^.]+")
        elif segment == ">":
            if index != len(segments) - 1:
                raise ValueError(f"pattern {pattern!r}: '>' may only be the last segment")
            parts.append(r"[^.]+(?:\.[^.]+)*")
        else:
            parts.append(re.escape(segment))
    return re.compile(r"\.".join(parts))


@dataclass(frozen=True, slots=True)
class Route:
    """One registered handler: its pattern, the model its data becomes, how long it may run."""

    pattern: str
    matcher: re.Pattern[str]
    handler: Callable[..., Any]
    model: type[Any] | None
    timeout_s: float | None = None

    @property
    def handler_name(self) -> str:
        """The handler's qualified name, for logs."""
        return str(getattr(self.handler, "__qualname__", repr(self.handler)))


class Router:
    """Handlers by pattern; several may match one name, and all of them run."""

    def __init__(self) -> None:
        self._routes: list[Route] = []
        self._by_name: dict[str, tuple[Route, ...]] = {}

    def __bool__(self) -> bool:
        return bool(self._routes)

    def add(
        self,
        pattern: str,
        handler: Callable[..., Any],
        model: type[Any] | None,
        timeout_s: float | None = None,
    ) -> Route:
        """Register a handler for names matching `pattern` (validated now)."""
        route = Route(pattern, compile_pattern(pattern), handler, model, timeout_s)
        self._routes.append(route)
        self._by_name.clear()
        return route

    def routes_for(self, name: str) -> tuple[Route, ...]:
        """The routes whose pattern matches `name`, in registration order."""
        lowered = name.lower()
        found = self._by_name.get(lowered)
        if found is None:
            found = tuple(r for r in self._routes if r.matcher.fullmatch(lowered))
            if len(self._by_name) >= NAME_CACHE_SIZE:
                self._by_name.clear()
            self._by_name[lowered] = found
        return found
