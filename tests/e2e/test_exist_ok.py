"""`create_subscription(..., exist_ok=True)` and a subscription made with other settings.

It returns the subscription as it is, and says which of the settings asked for
it does not have.
"""

from __future__ import annotations

import asyncio
import warnings

import pytest

from eventbroker import AsyncClient, Client, SubscriptionSettingsWarning

WAIT_S = 10.0


def test_exist_ok_names_each_setting_that_differs(broker_target: str) -> None:
    with Client(broker_target) as client:
        created = client.create_subscription(
            "mails", "user.*", ack_deadline=45, max_attempts=5, max_in_flight=3
        )
        with pytest.warns(SubscriptionSettingsWarning) as caught:
            again = client.create_subscription(
                "mails",
                ["order.*", "refund.>"],
                ack_deadline="30s",
                max_attempts=5,  # the same: not named
                retry_delays=[10, "1m"],
                ordered=True,
                exist_ok=True,
            )
        assert again == created == client.get_subscription("mails")  # nothing changed
    (warning,) = caught
    assert isinstance(warning.message, SubscriptionSettingsWarning)
    assert warning.filename == __file__  # it points at the call that asked
    assert warning.message.subscription == "mails"
    assert warning.message.differences == [
        ("filter", "user.*", "order.*, refund.>"),
        ("ack_deadline", "45 s", "30 s"),
        ("retry_delays", "none", "10 s, 1 min"),
        ("ordered", "off", "on"),
    ]
    text = str(warning.message)
    assert text.startswith("subscription 'mails' exists with other settings, left as they are")
    assert "ack_deadline is 45 s, asked 30 s" in text and "update_subscription" in text


def test_exist_ok_is_quiet_when_the_settings_asked_for_are_there(broker_target: str) -> None:
    with Client(broker_target) as client:
        client.create_subscription("mails", ["user.*", "order.>"], max_age="1 day")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            # Same filter (in another order and case), a setting that matches, and
            # settings left out, which say nothing about an existing subscription.
            client.create_subscription("mails", ["Order.>", "user.*"], max_age=86400, exist_ok=True)
            client.create_subscription("mails", ["user.*", "order.>"], exist_ok=True)


def test_the_asyncio_client_warns_the_same(broker_target: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(broker_target) as client:
            created = await client.create_subscription("mails", "user.*", max_in_flight=2)
            with pytest.warns(SubscriptionSettingsWarning, match="max_in_flight is 2, asked 7"):
                again = await client.create_subscription(
                    "mails", "user.*", max_in_flight=7, exist_ok=True
                )
            assert again == created

    asyncio.run(asyncio.wait_for(scenario(), WAIT_S))


def test_exist_ok_names_a_different_cap_per_key_and_key_header(broker_target: str) -> None:
    with Client(broker_target) as client:
        client.create_subscription("tenants", "job.*", max_in_flight_per_key=2, key_header="tenant")
        with pytest.warns(SubscriptionSettingsWarning) as caught:
            client.create_subscription(
                "tenants", "job.*", max_in_flight_per_key=3, key_header="org", exist_ok=True
            )
    (warning,) = caught
    assert isinstance(warning.message, SubscriptionSettingsWarning)
    assert warning.message.differences == [
        ("max_in_flight_per_key", "2", "3"),
        ("key_header", "'tenant'", "'org'"),
    ]
