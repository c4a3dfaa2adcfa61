"""Which channels-redis layer should carry the doorbell? (issue 4; prints numbers)

Each worker process has exactly one member in one group, so the layer's job is small:
deliver each committed batch to every worker, fast. This measures, for each layer class,
one sender `group_send`-ing batches to a group with WORKERS members in other processes:
latency per delivered message (p50/p99/max), how many arrived, at a paced rate and in an
unpaced burst, and whether an idle member survives a quiet period longer than the Redis
socket timeout.

    REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python bench/doorbell_layers.py
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import time
import uuid
from typing import Any

LAYERS = {
    "RedisChannelLayer": "channels_redis.core.RedisChannelLayer",
    "RedisPubSubChannelLayer": "channels_redis.pubsub.RedisPubSubChannelLayer",
}
WORKERS = 2
# A batch as the doorbell sends it: one event of a small item (positions make it unique).
EVENT = ["Target", "t1", "SET", {"id": "t1", "name": "x" * 40, "category": "c", "sceneId": None}]


def make_layer(path: str, url: str) -> Any:
    module, _, name = path.rpartition(".")
    cls = getattr(__import__(module, fromlist=[name]), name)
    config: dict[str, Any] = {"hosts": [url]}
    if name == "RedisChannelLayer":
        config.update(capacity=10_000, expiry=60)
    return cls(**config)


def member(path: str, url: str, group: str, ready: Any, out: Any, idle: float) -> None:
    """One worker's listener: joins, receives until told to stop, reports receive times."""

    async def main() -> None:
        layer = make_layer(path, url)
        channel = await layer.new_channel("bench.")
        await layer.group_add(group, channel)
        ready.set()
        arrivals: list[tuple[int, float]] = []
        errors = 0
        while True:
            try:
                message = await layer.receive(channel)
            except Exception:  # noqa: BLE001 - counted: an idle listener must survive
                errors += 1
                await asyncio.sleep(0.05)
                continue
            if message.get("stop"):
                break
            arrivals.append((message["n"], time.time() - message["sent"]))
        out.put(json.dumps({"arrivals": arrivals, "errors": errors, "idle": idle}))

    asyncio.run(main())


async def send(layer: Any, group: str, count: int, rate: float | None) -> float:
    started = time.perf_counter()
    for n in range(count):
        await layer.group_send(
            group, {"type": "myko.events", "n": n, "sent": time.time(), "events": [[n, *EVENT]]}
        )
        if rate:
            delay = started + (n + 1) / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
    return time.perf_counter() - started


def measure(path: str, url: str, count: int, rate: float | None, idle: float = 0.0) -> dict:
    group = f"bench.{uuid.uuid4().hex[:8]}"
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    readies = [ctx.Event() for _ in range(WORKERS)]
    procs = [ctx.Process(target=member, args=(path, url, group, r, out, idle)) for r in readies]
    for p in procs:
        p.start()
    for r in readies:
        r.wait(10)

    async def drive() -> float:
        layer = make_layer(path, url)
        await asyncio.sleep(0.2 + idle)  # the pub/sub layer subscribes asynchronously
        elapsed = await send(layer, group, count, rate)
        await asyncio.sleep(0.5)
        await layer.group_send(group, {"type": "myko.events", "stop": True})
        return elapsed

    elapsed = asyncio.run(drive())
    reports = [json.loads(out.get(timeout=30)) for _ in procs]
    for p in procs:
        p.join(10)
    latencies = sorted(lat for r in reports for _, lat in r["arrivals"])
    delivered = len(latencies)
    ordered = all(
        [n for n, _ in r["arrivals"]] == sorted(n for n, _ in r["arrivals"]) for r in reports
    )

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    return {
        "sent per member": count,
        "delivered": f"{delivered}/{count * WORKERS}",
        "send rate/s": round(count / elapsed),
        "p50 ms": round(statistics.median(latencies) * 1000, 2) if latencies else None,
        "p99 ms": round(pct(0.99), 2) if latencies else None,
        "max ms": round(latencies[-1] * 1000, 2) if latencies else None,
        "in order": ordered,
        "receive errors": sum(r["errors"] for r in reports),
    }


def main() -> None:
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    print(f"Redis {url}; {WORKERS} member processes; {os.cpu_count()} cores shared by all")
    cases = [
        ("paced 200/s x 2000", 2000, 200.0, 0.0),
        ("burst 10000", 10_000, None, 0.0),
        ("after 7 s idle (> 5 s socket timeout), 100", 100, None, 7.0),
    ]
    for label, count, rate, idle in cases:
        for name, path in LAYERS.items():
            result = measure(path, url, count, rate, idle)
            print(f"{label:<44} {name:<24} " + json.dumps(result))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
