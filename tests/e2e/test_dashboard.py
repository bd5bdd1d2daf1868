"""The live dashboard, in a real headless browser (Debian's chromium through playwright).

`make test` installs chromium; without it the test skips locally and fails in CI
(`BROKER_REQUIRE_BROWSER=1`).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from eventbroker import Client
from tests.conftest import BrokerThread

WAIT_MS = 10_000
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
def page(broker_server: BrokerThread) -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        message = "the dashboard test needs Debian's chromium (make test installs it)"
        if os.environ.get("BROKER_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            tab = browser.new_page(viewport={"width": 1366, "height": 768})  # a laptop screen
            fetched: list[str] = []
            tab.on("request", lambda request: fetched.append(request.url))
            tab.goto(f"http://127.0.0.1:{broker_server.app.http_port}/")
            yield tab
            origin = f"http://127.0.0.1:{broker_server.app.http_port}/"
            assert all(url.startswith(origin) for url in fetched), fetched  # nothing from outside
        finally:
            browser.close()


def cell(page: Any, subscription: str, column: str) -> Any:
    return page.locator(f'#subscriptions tr[data-subscription="{subscription}"] td.{column}')


def test_the_dashboard_updates_live_explains_and_redrives(
    page: Any, broker_server: BrokerThread, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    with Client(broker_server.target) as client:
        client.create_subscription("billing", "order.*")
        expect(cell(page, "billing", "ready")).to_have_text("0", timeout=WAIT_MS)
        published = [r.event_id for r in client.publish_batch([{"name": "order.new"}] * 3)]
        # The numbers change without a reload.
        expect(cell(page, "billing", "ready")).to_have_text("3", timeout=WAIT_MS)
        expect(page.locator("#events-stored")).to_have_text("3", timeout=WAIT_MS)

        for batch in client.subscribe("billing", max_outstanding=3):
            client.ack(batch[:1])
            client.nack(batch[1:2], terminal=True, error="card declined")
            break
        expect(cell(page, "billing", "acked")).to_have_text("1", timeout=WAIT_MS)
        expect(cell(page, "billing", "dead")).to_have_text("1", timeout=WAIT_MS)

        # Why is it waiting: the third, given back when the stream closed, waits for one.
        held = batch[2].event_id
        page.fill("#event-id", held)
        page.click("#event-search")
        expect(page.locator('#event-result li[data-subscription="billing"]')).to_contain_text(
            "waiting for a consumer", timeout=WAIT_MS
        )

        # The dead letter, its reason and error, and redrive from the page.
        dead = batch[1].event_id
        page.select_option("#dlq-subscription", "billing")
        row = page.locator(f'#dlq tr[data-event-id="{dead}"]')
        expect(row).to_contain_text("card declined", timeout=WAIT_MS)
        expect(row).to_contain_text("nacked_terminal")
        died = row.locator("td.time").inner_text()
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", died), died  # UTC, as the CLI

        # Its id is a link to the lookup.
        row.locator("a.event-link").click()
        expect(page.locator('#event-result li[data-subscription="billing"]')).to_contain_text(
            "card declined", timeout=WAIT_MS
        )
        assert page.evaluate("location.hash") == f"#event={dead}"

        # A chart per subscription, drawn from the page's own polls.
        card = page.locator('#charts section[data-subscription="billing"]')
        expect(card.locator("svg.counts polyline")).to_have_count(3, timeout=WAIT_MS)
        expect(card.locator("svg.rates polyline")).to_have_count(2)
        page.wait_for_function(
            """() => document.querySelector('#charts [data-subscription="billing"] '
                + 'polyline[data-series="ready"]').getAttribute('points').split(' ').length >= 3""",
            timeout=WAIT_MS,
        )
        expect(card.locator(".legend .dead")).to_have_text("dead 1")

        # Nothing scrolls sideways on a laptop screen.
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

        # Redrive asks first: declined, nothing happens; accepted, it is redriven.
        questions: list[str] = []

        def answer(accept: bool) -> Callable[[Any], None]:
            def respond(dialog: Any) -> None:
                questions.append(dialog.message)
                dialog.accept() if accept else dialog.dismiss()

            return respond

        page.once("dialog", answer(False))
        row.locator("button.redrive").click()
        assert questions and dead in questions[0]
        page.wait_for_timeout(1500)  # a tick or more: the row must still be there
        expect(row).to_have_count(1)
        status = client.get_event(dead).delivery("billing")
        assert status is not None and status.state == "dead"
        page.once("dialog", answer(True))
        row.locator("button.redrive").click()
        expect(row).to_have_count(0, timeout=WAIT_MS)
        expect(cell(page, "billing", "dead")).to_have_text("0", timeout=WAIT_MS)
        status = client.get_event(dead).delivery("billing")
        assert status is not None and status.state == "ready"
    assert set(published) >= {held, dead}
    shot = tmp_path / "dashboard.png"
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("BROKER_SCREENSHOT_DIR")  # to look at it after the run
    if keep:
        shutil.copy(shot, Path(keep) / "dashboard.png")


def test_the_event_lookup_shows_the_trace_id(page: Any, broker_server: BrokerThread) -> None:
    from playwright.sync_api import expect

    trace_id = "0af7651916cd43dd8448eb211c80319c"
    with Client(broker_server.target) as client:
        traced = client.publish(
            "order.new", headers={"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"}
        )
        untraced = client.publish("order.new")
    page.fill("#event-id", traced.event_id)
    page.click("#event-search")
    expect(page.locator("#event-result .trace")).to_have_text(f"trace {trace_id}", timeout=WAIT_MS)
    page.fill("#event-id", untraced.event_id)
    page.click("#event-search")
    expect(page.locator("#event-result")).to_contain_text(untraced.event_id, timeout=WAIT_MS)
    expect(page.locator("#event-result .trace")).to_have_count(0)


def test_the_dashboard_shows_the_cap_per_key_and_what_holds_a_key(
    page: Any, broker_server: BrokerThread
) -> None:
    from playwright.sync_api import expect

    with Client(broker_server.target) as client:
        client.create_subscription("tenants", "job.*", max_in_flight_per_key=2, key_header="tenant")
        expect(cell(page, "tenants", "limits")).to_have_text(
            "2 per key · key: header tenant", timeout=WAIT_MS
        )
        ids = [
            r.event_id
            for r in client.publish_batch([{"name": "job.run", "headers": {"tenant": "t1"}}] * 3)
        ]
        stream = client.subscribe("tenants", max_outstanding=10)
        try:
            held = next(stream)
            assert {d.event_id for d in held} <= set(ids[:2])
            page.fill("#event-id", ids[2])
            page.click("#event-search")
            found = page.locator('#event-result li[data-subscription="tenants"]')
            expect(found).to_contain_text("waiting: 2 of 't1' in flight", timeout=WAIT_MS)
            expect(found.locator(".key-wait")).to_have_text(" (key t1: 2 of 2 slots held)")
        finally:
            stream.close()
