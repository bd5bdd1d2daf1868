"""Type checkers see a handler's model: `on(..., model=Order)` hands it a `Message[Order]`."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, assert_type

from mypy import api as mypy_api

from eventbroker import Consumer, Context, Message


@dataclass
class Order:
    order_id: int


def test_a_bare_message_holds_any_data_and_a_typed_one_its_model() -> None:
    consumer = Consumer("billing", target="127.0.0.1:9")

    @consumer.on("order.new", model=Order)
    async def charge(msg: Message[Order], ctx: Context) -> None:
        assert_type(msg.data, Order)

    @consumer.on("order.*")
    async def audit(msg: Message, ctx: Context) -> None:
        assert_type(msg.data, Any)

    assert [route.model for route in consumer._router.routes_for("order.new")] == [Order, None]


def _mypy(tmp_path: Path, code: str) -> tuple[str, int]:
    source = tmp_path / "handlers.py"
    source.write_text(textwrap.dedent(code))
    stdout, _, status = mypy_api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / ".mypy_cache"), str(source)]
    )
    return stdout, status


def test_mypy_reveals_the_model_and_refuses_a_handler_of_another(tmp_path: Path) -> None:
    stdout, status = _mypy(
        tmp_path,
        """
        from dataclasses import dataclass
        from eventbroker import Consumer, Context, Message

        @dataclass
        class Order:
            order_id: int

        @dataclass
        class Refund:
            refund_id: int

        consumer = Consumer("billing")

        @consumer.on("order.new", model=Order)
        async def charge(msg: Message[Order], ctx: Context) -> None:
            reveal_type(msg.data)

        @consumer.on("order.refunded", model=Order)
        async def refund(msg: Message[Refund], ctx: Context) -> None: ...
        """,
    )
    assert status == 1
    assert 'Revealed type is "handlers.Order"' in stdout
    assert "handlers.py:19: error" in stdout and "Message[Refund]" in stdout
    assert stdout.count("error:") == 1
