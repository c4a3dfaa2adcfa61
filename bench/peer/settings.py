"""Settings of every fan-out benchmark server: the demo project plus the bench app.

The peer (djangochannelsrestframework) needs a channel layer for its consumers, so the
"default" layer is channels-redis' RedisChannelLayer with its defaults, as a Django team
would configure it; myko's workers ring each other on a pub/sub alias of their own
(README: point MYKO["CHANNEL_LAYER"] at a pub/sub alias) and its connections never join a
layer.
"""

import os

from project.settings import *  # noqa: F403
from project.settings import INSTALLED_APPS, MYKO

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
# The peer's groups are named by category alone: two runs sharing a Redis keep apart.
PREFIX = os.environ.get("MYKO_BENCH_LAYER_PREFIX", "mykobench")

INSTALLED_APPS = [*INSTALLED_APPS, "rest_framework", "bench.peer"]

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "prefix": PREFIX},
    },
    "myko": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "prefix": PREFIX},
    },
}

# The demo's MYKO (Scene and Target open to anyone) plus the layer: replacing it whole
# would close Target to the anonymous subscribers of bench/fanout.py.
MYKO = {**MYKO, "CHANNEL_LAYER": "myko"}

if os.environ.get("MYKO_BENCH_GC_LOG"):
    # Diagnostics (bench/fanout.py --gc-log): every cyclic GC pause over 5 ms goes to the
    # daphne log with its wall-clock time, to line it up with latency tails.
    import gc
    import sys
    import time

    _gc_started = [0.0]

    def _log_gc_pause(phase: str, info: dict) -> None:
        if phase == "start":
            _gc_started[0] = time.perf_counter()
            return
        pause = time.perf_counter() - _gc_started[0]
        if pause > 0.005:
            generation = info["generation"]
            print(
                f"GC {time.time():.3f} gen{generation} {pause * 1000:.1f} ms",
                file=sys.stderr,
                flush=True,
            )

    gc.callbacks.append(_log_gc_pause)
