"""Delivery under a rate limit: the share of a gateway's limit that the 429 adaptation reaches.

A stand-in gateway (rudder_sync_tests/gateway.py's `TestGateway`, in this process) accepts at
most ``--rate`` events per fixed one-second window and answers a request that would go beyond
with 429 "max requests limit reached" and no Retry-After, as a RudderStack workspace over its
plan's limit does; a refused request spends nothing. ``RudderstackResource.deliver`` sends
``--events`` Track events (~300 bytes each) with its default settings (no
max_events_per_second: it only has the 429s to go by).

Each policy runs against a fresh gateway: ``new`` is this checkout's rudder_sync/rudderstack.py,
``old`` the same file at ``--old-rev`` (loaded from git into a scratch package beside its
errors.py), so both are measured in the same run on the same machine.

    .venv/bin/python -m bench.bench_rate_limit --rate 400 --events 8000 --old-rev 9143b55
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson

from .common import REPO, invocation, log, markdown_table, record_section

WRITE_KEY = "bench-write-key"


def load_policy(rev: str | None) -> ModuleType:
    """rudder_sync.rudderstack of this checkout (None), or of a git revision (a scratch copy)."""
    if rev is None:
        return importlib.import_module("rudder_sync.rudderstack")
    root = Path(tempfile.mkdtemp(prefix="rudder_sync_old_"))
    package = root / "old_rudder_sync"
    package.mkdir()
    (package / "__init__.py").write_text(f'__version__ = "old-{rev}"\n')
    for name in ("rudderstack.py", "errors.py"):
        source = subprocess.run(
            ["git", "show", f"{rev}:rudder_sync/{name}"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (package / name).write_text(source)
    sys.path.insert(0, str(root))
    return importlib.import_module("old_rudder_sync.rudderstack")


def make_events(module: ModuleType, count: int) -> list[Any]:
    events = []
    for i in range(count):
        event = {
            "type": "track",
            "messageId": f"m-{i}",
            "userId": f"u{i}",
            "event": "Order Completed",
            "timestamp": "2024-05-01T12:00:00.123Z",
            "properties": {"i": i, "pad": "x" * 180},
            "context": {"library": {"name": "rudder_sync"}},
        }
        events.append(
            module.OutgoingEvent(ref=i, message_id=event["messageId"], body=orjson.dumps(event))
        )
    return events


def measure(
    policy: str, module: ModuleType, rate: int, count: int, request_kb: int
) -> dict[str, Any]:
    """Deliver ``count`` events against a gateway limited to ``rate`` events/s."""
    from rudder_sync_tests.gateway import TestGateway

    with TestGateway(write_key=WRITE_KEY, validate_schema=False, keep_bodies=False) as gateway:
        gateway.rate_limit(rate, window_seconds=1.0)
        resource = module.RudderstackResource(
            data_plane_url=gateway.url, write_key=WRITE_KEY, max_request_kb=request_kb
        )
        stats = module.DeliveryStats()
        events = make_events(module, count)
        marks: list[tuple[float, int]] = []  # (seconds, events the gateway has stored)
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                marks.append((time.monotonic() - started, len(gateway.stored)))

        sampler = threading.Thread(target=sample, daemon=True)
        started = time.monotonic()
        sampler.start()
        accepted = sum(len(outcome.accepted) for outcome in resource.deliver(events, stats))
        seconds = time.monotonic() - started
        done.set()
        sampler.join()
        arrived = {event["messageId"] for event in gateway.events}
        answers = [request.status for request in gateway.requests]
    half = next((t for t, stored in marks if stored >= count // 2), seconds)
    row = {
        "policy": policy,
        "request_kb": request_kb,
        "events": count,
        "arrived": len(arrived),
        "seconds": seconds,
        "eps": accepted / seconds,
        "share": accepted / seconds / rate,
        "second_half_eps": (count - count // 2) / (seconds - half) if seconds > half else 0.0,
        "requests": len(answers),
        "throttled": answers.count(429),
        "events_per_accepted_request": accepted / max(1, answers.count(200)),
    }
    log(
        f"  {policy:4s} max_request_kb {request_kb:5d} {seconds:7.1f}s {row['eps']:7.1f} "
        f"events/s = {row['share']:.0%} of {rate}/s (second half "
        f"{row['second_half_eps']:.1f}/s); {row['requests']:,} requests, "
        f"{row['throttled']:,} answered 429; arrived {len(arrived):,}/{count:,}"
    )
    if len(arrived) != count:
        raise SystemExit(f"{policy}: {len(arrived)} of {count} events arrived")
    return row


def report(rows: list[dict[str, Any]], rate: int, old_rev: str | None) -> str:
    table = markdown_table(
        [
            "policy",
            "max_request_kb",
            "events",
            "seconds",
            "events/s",
            "share of the limit",
            "second half events/s",
            "requests",
            "429s",
            "events per accepted request",
        ],
        [
            [
                r["policy"] + (f" ({old_rev})" if r["policy"] == "old" else " (this checkout)"),
                f"{r['request_kb']:,}",
                f"{r['events']:,}",
                f"{r['seconds']:.1f}",
                f"{r['eps']:.1f}",
                f"{r['share']:.0%}",
                f"{r['second_half_eps']:.1f}",
                f"{r['requests']:,}",
                f"{r['throttled']:,}",
                f"{r['events_per_accepted_request']:.0f}",
            ]
            for r in rows
        ],
    )
    return (
        f"{table}\n\nThe gateway accepts at most {rate} events per fixed one-second window and "
        'answers 429 "max requests limit reached" without Retry-After to a request that would '
        "go beyond (a refused request spends nothing); the resource has its default settings "
        "except max_request_kb, and no max_events_per_second. Events/s = events accepted / "
        "seconds from the first request to the last answer; share of the limit = that / the "
        "limit; second half: the events/s of the second half of the events, as the gateway "
        "stored them (sampled every 50 ms). Target: >= 80 %."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Delivery under a 429 rate limit")
    parser.add_argument("--rate", type=int, default=400, help="the gateway's events per second")
    parser.add_argument("--events", type=int, default=8000)
    parser.add_argument("--old-rev", default=None, help="git revision of the old policy")
    parser.add_argument("--policies", default="old,new")
    parser.add_argument(
        "--request-kb",
        default="4000,64",
        help="max_request_kb values to run (4000: the default, the first request is far above "
        "the limit; 64: about 200 events per request, below it)",
    )
    parser.add_argument("--no-record", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args()
    policies = [p for p in args.policies.split(",") if p]
    if "old" in policies and args.old_rev is None:
        raise SystemExit("--old-rev is required to measure the old policy")
    rows = []
    for request_kb in (int(kb) for kb in args.request_kb.split(",") if kb):
        for policy in policies:
            module = load_policy(args.old_rev if policy == "old" else None)
            rows.append(measure(policy, module, args.rate, args.events, request_kb))
    if not args.no_record:
        record_section(
            "bench_rate_limit",
            "Delivery under a 429 rate limit",
            report(rows, args.rate, args.old_rev),
            invocation(),
        )


if __name__ == "__main__":
    main()
