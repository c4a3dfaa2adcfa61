"""Costs of two issue-13 defences, each against its undefended peer in the same run.

1. Signed doorbell messages (server/doorbell.py): microseconds to sign and to verify one
   batch, next to what channels-redis spends packing and unpacking the same message anyway.
2. Big frames decoded off the event loop (server/connection.py): the longest the loop
   stalls while a 12 MB GetTargetsByIds frame is decoded and refused, on the loop (as
   before) and on the decoding thread.

    .venv/bin/python bench/hardening.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")


def _signing(quick: bool) -> list[dict]:
    import django

    django.setup()
    import msgpack

    from myko_django.live.committed import CommittedEvent
    from myko_django.server import doorbell

    group = "myko.events.bench.0123456789ab"
    rows = []
    for n in (1, 100):
        item = {"id": "0", "name": "n" * 20, "category": "a", "n": 1, "price": "1.50"}
        events = [
            CommittedEvent(i, "Target", str(i), "SET", {**item, "id": str(i)}) for i in range(n)
        ]
        message = doorbell.to_message(events, 1.0, group)
        received = msgpack.unpackb(msgpack.packb(message, use_bin_type=True), raw=False)
        assert doorbell.from_message(received, group) is not None
        plain = {k: v for k, v in message.items() if k != "sig"}
        number = (2_000 if quick else 20_000) // n

        def each(f, number=number):
            return timeit.timeit(f, number=number) / number * 1e6

        sign = each(lambda e=events: doorbell.to_message(e, 1.0, group))
        verify = each(lambda r=received: doorbell.from_message(r, group))
        carry = each(
            lambda p=plain: msgpack.unpackb(msgpack.packb(p, use_bin_type=True), raw=False)
        )
        rows.append(
            {
                "workload": "doorbell signing",
                "metric": f"sign + verify, {n} event(s)",
                "value": round(sign + verify, 1),
                "unit": "us",
                "peer": f"channels-redis pack+unpack {carry:.1f} us",
                "ratio": round((sign + verify) / carry, 2),
            }
        )
    return rows


def _big_frame(quick: bool) -> list[dict]:
    import msgpack

    from myko_django.server import connection
    from myko_django.wire import codecs

    n = 100_000 if quick else 500_000
    ids = [f"{i:020d}" for i in range(n)]
    message = {
        "event": "ws:m:query",
        "data": {"query": {"tx": "big", "ids": ids}, "queryId": "GetTargetsByIds"},
    }
    frames = {"json": json.dumps(message), "msgpack": msgpack.packb(message)}

    async def longest_stall(fmt: str, on_thread: bool) -> float:
        frame = frames[fmt]
        gaps: list[float] = []
        stop = asyncio.Event()

        async def tick() -> None:
            last = time.perf_counter()
            while not stop.is_set():
                await asyncio.sleep(0.001)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        ticker = asyncio.get_running_loop().create_task(tick())
        await asyncio.sleep(0.05)
        decode = codecs.decode_text if fmt == "json" else codecs.decode_binary
        args = (frame,) if fmt == "json" else (frame, fmt)
        if on_thread:
            await connection._decode(len(frame), True, decode, *args)
        else:
            decode(*args)
        await asyncio.sleep(0.02)
        stop.set()
        await ticker
        return max(gaps) * 1000

    rows = []
    for fmt, frame in frames.items():
        inline = asyncio.run(longest_stall(fmt, False))
        threaded = asyncio.run(longest_stall(fmt, True))
        rows.append(
            {
                "workload": "big frame",
                "metric": f"longest loop stall, {len(frame) / 1e6:.1f} MB {fmt} frame",
                "value": round(threaded, 1),
                "unit": "ms",
                "peer": f"decoded on the loop {inline:.1f} ms",
                "ratio": round(threaded / inline, 2),
            }
        )
    return rows


def run(quick: bool = False) -> list[dict]:
    return _signing(quick) + _big_frame(quick)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    for row in run(parser.parse_args().quick):
        print(
            f"{row['workload']:17} {row['metric']:44} {row['value']:>8} {row['unit']:3} "
            f"(peer: {row['peer']}; ratio {row['ratio']})"
        )
