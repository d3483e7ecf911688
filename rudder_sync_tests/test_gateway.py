"""The test gateway answers every reference case exactly as rudder-server does.

If the stand-in drifted from the real gateway, the delivery tests would prove nothing; so each
case of reference/rudder-gateway-cases.json is replayed over raw HTTP here.
"""

import base64
import gzip
import json
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from rudder_sync_tests.gateway import MAX_REQUEST_BYTES, TestGateway

CASES_PATH = Path(__file__).parent / "reference" / "rudder-gateway-cases.json"
CASES: list[dict[str, Any]] = json.loads(CASES_PATH.read_text())["cases"]
# Conditions of a loaded production gateway that a test can only script.
SCRIPTED_STATUSES = {429, 503, 504}
KEY = "test-write-key"


def basic(user: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def oversized_batch() -> bytes:
    """Valid JSON just over 4,096,000 bytes whose events all have a userId."""
    event = {"type": "track", "userId": "u1", "event": "E", "properties": {"pad": "x" * 1000}}
    count = MAX_REQUEST_BYTES // len(orjson.dumps(event)) + 2
    body = orjson.dumps({"batch": [event] * count})
    assert len(body) > MAX_REQUEST_BYTES
    return body


def case_body(case: dict[str, Any]) -> bytes:
    if "raw_body" in case:
        return case["raw_body"].encode()
    if "body_gzipped" in case:
        return gzip.compress(orjson.dumps(case["body_gzipped"]))
    if isinstance(case.get("body"), str):  # a description of a body too big to write down
        return oversized_batch()
    return orjson.dumps(case["body"]) if "body" in case else b""


def case_headers(case: dict[str, Any], gateway: TestGateway) -> dict[str, str]:
    headers = {"Content-Type": "application/json", **case.get("headers", {})}
    auth = case.get("auth", "Basic base64(WRITEKEY:)")
    if auth is not None:
        match = re.fullmatch(r"Basic base64\((\w*):(\w*)\)", auth)
        assert match, auth
        names = {"WRITEKEY": gateway.write_key, "DISABLEDKEY": gateway.disabled_write_key}
        headers["Authorization"] = basic(names.get(match[1], match[1]), match[2])
    return headers


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_reference_case(gateway: TestGateway, case: dict[str, Any]) -> None:
    if case["status"] in SCRIPTED_STATUSES:
        gateway.fail_next(case["status"])
    response = httpx.request(
        case.get("method", "POST"),
        gateway.url + case.get("path", "/v1/batch"),
        content=case_body(case),
        headers=case_headers(case, gateway),
    )
    assert response.status_code == case["status"]
    if "body_exact" in case:
        assert response.text == case["body_exact"]
        assert response.headers["content-type"] == "text/plain; charset=utf-8"


def post(
    gateway: TestGateway, body: bytes, path: str = "/v1/batch", **headers: str
) -> httpx.Response:
    return httpx.post(
        gateway.url + path, content=body, headers={"Authorization": basic(KEY), **headers}
    )


def padded_batch(size: int) -> bytes:
    """A valid one-event batch of exactly ``size`` bytes."""
    shell = orjson.dumps({"batch": [{"type": "track", "userId": "u1", "event": "E", "p": ""}]})
    body = shell.replace(b'"p":""', b'"p":"' + b"x" * (size - len(shell)) + b'"')
    assert len(body) == size
    return body


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_size_limit_is_inclusive_and_counts_uncompressed_bytes(
    gateway: TestGateway, compress: bool
) -> None:
    gateway.max_request_bytes = 5000
    for size, status in ((5000, 200), (5001, 413)):
        body = padded_batch(size)
        extra = {"Content-Encoding": "gzip"} if compress else {}
        response = post(gateway, gzip.compress(body) if compress else body, **extra)
        assert response.status_code == status, size
    assert [r.body_size for r in gateway.requests] == [5000, 5001]


def test_truncated_gzip_is_unreadable(gateway: TestGateway) -> None:
    body = gzip.compress(orjson.dumps({"batch": [{"userId": "u1"}]}))[:-6]
    response = post(gateway, body, **{"Content-Encoding": "gzip"})
    assert (response.status_code, response.text) == (500, "failed to read body from request\n")


def test_stores_events_with_messageid_and_type_like_the_gateway(gateway: TestGateway) -> None:
    batch = [
        {"type": "track", "userId": "u1", "event": "E", "messageId": "m-1"},
        {"type": "identify", "anonymousId": "a1", "messageId": 42},
    ]
    assert post(gateway, orjson.dumps({"batch": batch})).text == "ok"
    assert post(gateway, orjson.dumps({"userId": "u2", "event": "F"}), "/v1/track").text == "ok"

    first, second, third = gateway.events
    assert first["messageId"] == "m-1"
    assert isinstance(second["messageId"], str) and len(second["messageId"]) == 36
    assert third["type"] == "track" and third["messageId"]
    assert [s["request"] for s in gateway.stored] == [0, 0, 1]
    assert [r.status for r in gateway.requests] == [200, 200]
    assert gateway.schema_errors == []


def test_records_schema_violations_of_accepted_events(gateway: TestGateway) -> None:
    batch = [
        {"type": "track", "userId": 7, "event": "E"},
        {"type": "identify", "userId": "u1", "timestamp": "2024-05-01 noon"},
        {"type": "track", "userId": "u1", "event": "E", "timestamp": "2024-05-01T12:00:00.5Z"},
        {"userId": "u1"},
    ]
    assert post(gateway, orjson.dumps({"batch": batch})).status_code == 200
    errors = "\n".join(gateway.schema_errors)
    assert "userId: 7 is not of type 'string'" in errors
    assert "'2024-05-01 noon' is not a 'date-time'" in errors
    assert "event 2" not in errors
    assert "event 3: unknown or missing type None" in errors


def test_fail_next_answers_scripted_status_then_recovers(gateway: TestGateway) -> None:
    gateway.fail_next(429, times=2, retry_after=3)
    body = orjson.dumps({"batch": [{"userId": "u1"}]})
    first, second, third = (post(gateway, body) for _ in range(3))
    assert (first.status_code, first.text, first.headers["retry-after"]) == (
        429,
        "max requests limit reached\n",
        "3",
    )
    assert second.status_code == 429
    assert third.status_code == 200
    assert len(gateway.events) == 1


def test_cut_next_closes_without_answer(gateway: TestGateway) -> None:
    gateway.cut_next()
    gateway.cut_next(after_storing=True)
    body = orjson.dumps({"batch": [{"userId": "u1"}]})
    for _ in range(2):
        with pytest.raises(httpx.RemoteProtocolError):
            post(gateway, body)
    assert [r.status for r in gateway.requests] == [0, 0]
    assert len(gateway.events) == 1  # only the second one stored before cutting


def test_delay_next_delays_then_handles(gateway: TestGateway) -> None:
    gateway.delay_next(0.3)
    started = time.monotonic()
    response = post(gateway, orjson.dumps({"batch": [{"userId": "u1"}]}))
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.3


def test_reject_events_where(gateway: TestGateway) -> None:
    gateway.reject_events_where(lambda event: event.get("userId") == "bad", "nope")
    good = post(gateway, orjson.dumps({"batch": [{"userId": "ok"}]}))
    bad = post(gateway, orjson.dumps({"batch": [{"userId": "ok"}, {"userId": "bad"}]}))
    assert (good.status_code, bad.status_code, bad.text) == (200, 400, "nope\n")
    assert [event["userId"] for event in gateway.events] == ["ok"]


def test_handles_concurrent_requests(gateway: TestGateway) -> None:
    def send(worker: int) -> None:
        with httpx.Client() as client:
            for i in range(10):
                body = orjson.dumps({"batch": [{"userId": f"u{worker}-{i}"}]})
                response = client.post(
                    gateway.url + "/v1/batch", content=body, headers={"Authorization": basic(KEY)}
                )
                assert response.status_code == 200

    threads = [threading.Thread(target=send, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(gateway.events) == 40
    assert sorted(r.index for r in gateway.requests) == list(range(40))


def test_stop_frees_the_port() -> None:
    with TestGateway() as gateway:
        port = int(gateway.url.rsplit(":", 1)[1])
        assert post(gateway, orjson.dumps({"batch": [{"userId": "u1"}]})).status_code == 200
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass


def test_clear_faults_forgets_unused_scripts(gateway: TestGateway) -> None:
    gateway.fail_next(503, times=5)
    gateway.reject_events_where(lambda event: True)
    gateway.clear_faults()
    assert post(gateway, orjson.dumps({"batch": [{"userId": "u1"}]})).status_code == 200
