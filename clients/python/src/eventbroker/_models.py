"""Typed events: dataclasses and pydantic models to JSON on publish, and back on receipt.

A publisher and its consumers can share one module of event types: the
publisher passes an instance as `data`, a handler registered with `model=` gets
an instance back. Pydantic is optional; without it a dataclass is built from the
JSON object's keys (no nested conversion).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import uuid
from datetime import date, time
from decimal import Decimal
from pathlib import PurePath
from typing import Any, Protocol, TypeVar, cast, runtime_checkable

T = TypeVar("T")


@runtime_checkable
class _PydanticModel(Protocol):
    def model_dump(self, *, mode: str) -> Any: ...


#: Types that are JSON as they are: checked first, as the check against the pydantic
#: protocol costs more (about 15 us) than the rest of turning data into JSON.
_PLAIN_JSON_TYPES = frozenset({dict, list, str, int, float, bool, type(None)})


def jsonable(data: Any) -> Any:
    """A dataclass instance or pydantic model as a JSON-able value; anything else as is."""
    if type(data) in _PLAIN_JSON_TYPES:
        return data
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        return dataclasses.asdict(data)
    if isinstance(data, _PydanticModel) and not isinstance(data, type):
        return data.model_dump(mode="json")
    return data


def dumps(data: Any) -> bytes:
    """Compact JSON bytes of `jsonable(data)`; dates, UUIDs, decimals and enums as strings.

    Raises:
        ValueError: The value is not JSON (NaN or Infinity) or holds a type JSON cannot carry.

    """
    try:
        text = json.dumps(
            jsonable(data), separators=(",", ":"), allow_nan=False, default=_json_default
        )
    except TypeError as error:
        raise ValueError(f"data is not JSON-serialisable: {error}") from error
    return text.encode()


def validate(model: type[T], data: Any) -> T:
    """The decoded JSON `data` as an instance of `model` (a dataclass or pydantic model).

    Raises:
        ValueError: The data does not fit the model (pydantic's `ValidationError` is one).
        TypeError: `model` is neither a dataclass nor a pydantic model.

    """
    validate_python = getattr(model, "model_validate", None)
    if validate_python is not None:
        return cast(T, validate_python(data))
    if not dataclasses.is_dataclass(model):
        raise TypeError(f"model {model!r} is neither a dataclass nor a pydantic model")
    adapter = _type_adapter(model)
    if adapter is not None:
        return cast(T, adapter.validate_python(data))
    if not isinstance(data, dict):
        raise ValueError(f"{model.__name__} needs a JSON object; got {type(data).__name__}")
    return model(**data)


def check_model(model: type[Any]) -> None:
    """Fail early, at handler registration, for a `model=` that cannot be validated into.

    Raises:
        TypeError: `model` is neither a dataclass nor a pydantic model class.

    """
    if not isinstance(model, type) or not (
        dataclasses.is_dataclass(model) or hasattr(model, "model_validate")
    ):
        raise TypeError(f"model must be a dataclass or a pydantic model class; got {model!r}")


@functools.cache
def _type_adapter(model: type[Any]) -> Any:
    try:
        from pydantic import TypeAdapter
    except ImportError:
        return None
    return TypeAdapter(model)


def _json_default(value: Any) -> Any:
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, uuid.UUID | Decimal | PurePath):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")
