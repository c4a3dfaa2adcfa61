"""myko.js (the browser client) against one daphne worker, from Node 20 with the `ws`
package: the round trip of a command (RenameTarget, one at a time) and the time from one
client's command until another client's live query shows the change, in JSON and CBOR.

The peer, in the same run: the same commands over a bare Python WebSocket (bench/support.py
`Conn`, no client state), so the ratio is what myko.js itself adds.

    .venv/bin/python bench/js_client.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import support  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORKLOAD = "js-client"


async def bare_commands(url: str, target_id: str, n: int) -> list[float]:
    conn = await support.Conn.open(url, "json")
    try:
        for i in range(20):
            await conn.command("RenameTarget", {"id": target_id, "name": f"warm {i}"})
        times = []
        for i in range(n):
            _, elapsed = await conn.command("RenameTarget", {"id": target_id, "name": f"b {i}"})
            times.append(elapsed * 1000)
        return times
    finally:
        await conn.close()


def run(quick: bool = False) -> list[dict]:
    support.setup_django("mykobench_js", fresh=True)
    from project.demo.models import Target
    from tests.support.npm import ensure_node_modules

    ensure_node_modules()
    n = 200 if quick else 1000
    Target.objects.update_or_create(id="js-bench", defaults={"name": "bench"})
    worker = support.start_worker(redis=False)
    rows = []
    try:
        bare = asyncio.run(bare_commands(worker.url, "js-bench", n))
        bare_p50 = support.percentile(bare, 50)
        rows.append(
            support.row(
                WORKLOAD,
                "command round trip, bare Python socket (JSON), p50",
                bare_p50,
                "ms",
                p99=round(support.percentile(bare, 99), 2),
                n=n,
            )
        )
        for protocol in ("json", "cbor"):
            out = subprocess.run(
                ["node", "bench/js_client.mjs", worker.url, protocol, str(n)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
                timeout=600,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            p50 = support.percentile(result["commands"], 50)
            rows.append(
                support.row(
                    WORKLOAD,
                    f"command round trip, myko.js ({protocol}), p50",
                    p50,
                    "ms",
                    p99=round(support.percentile(result["commands"], 99), 2),
                    vs_bare=f"{p50 / bare_p50:.2f}x",
                    n=n,
                )
            )
            updates = result["updates"]
            rows.append(
                support.row(
                    WORKLOAD,
                    f"command to another client's live query, myko.js ({protocol}), p50",
                    support.percentile(updates, 50),
                    "ms",
                    p99=round(support.percentile(updates, 99), 2),
                    n=n,
                )
            )
    finally:
        worker.stop()
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    support.print_rows(run(quick=parser.parse_args().quick))
