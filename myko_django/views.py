"""Plain HTTP endpoints for operating a worker: `/healthz`, `/readyz` and `/metrics`
(routed by `myko_django.urls`; README, "Operations").

They are async views: under daphne, Django's ASGI handler runs them on the worker's event
loop (where its hub lives), so they answer even while the thread that runs sync views is
busy, and the database check runs on a thread of its own.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from django.db import connections
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from myko_django import conf
from myko_django.items.sagas import registered as registered_sagas
from myko_django.log.read import high_water
from myko_django.sagas import runtime as saga_runtime
from myko_django.server import doorbell, drain, hub, metrics

CHECK_TIMEOUT = 3.0  # seconds each check of /readyz may take
PROBE_GROUP = "myko.readyz"  # a group nobody joins: a send to it is a round trip, no more


@never_cache
@require_safe
async def healthz(request: HttpRequest) -> HttpResponse:
    """200 while the process (its event loop) is alive. Touches nothing else."""
    return HttpResponse("ok\n", content_type="text/plain")


@never_cache
@require_safe
async def readyz(request: HttpRequest) -> JsonResponse:
    """200 when this worker should get traffic, else 503; the body says what was checked:
    the database answers, the channel layer answers (or none is configured: one process),
    and this worker's hub is at most MYKO["READY_MAX_LAG"] positions behind the log. A
    worker whose hub has not started yet (no socket so far) is ready; a draining one is not.
    """
    (database, head), layer = await asyncio.gather(_check_database(), _check_layer())
    checks = {"database": database, "layer": layer}
    ready = database == "ok" and not layer.startswith("error")
    if drain.draining():
        checks["drain"] = "draining: this worker is shutting down"
        ready = False
    running = hub.running_hub()
    if running is None:
        checks["hub"] = "not started"
    elif head is not None:
        behind = max(0, head - running.sequencer.applied)
        most = conf.get("READY_MAX_LAG")
        checks["hub"] = f"{behind} position(s) behind the log (at most {most})"
        ready = ready and behind <= most
    return JsonResponse({"ready": ready, "checks": checks}, status=200 if ready else 503)


async def _check_database() -> tuple[str, int | None]:
    """("ok", the log's head) or (what went wrong, None)."""
    try:
        head = await asyncio.wait_for(asyncio.shield(_log_head_check()), CHECK_TIMEOUT)
    except Exception as exc:
        return _failure(exc), None
    return "ok", head


async def _check_layer() -> str:
    layer = doorbell.layer()
    if layer is None:
        return "none (one process)"
    try:
        await asyncio.wait_for(layer.group_send(PROBE_GROUP, {"type": "myko.probe"}), CHECK_TIMEOUT)
    except Exception as exc:
        return _failure(exc)
    return "ok"


@never_cache
@require_safe
async def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus' text format, when MYKO["METRICS"] is on (404 otherwise)."""
    if not conf.get("METRICS"):
        raise Http404("metrics are off (MYKO['METRICS'])")
    sagas = await _saga_figures()
    body, content_type = metrics.render(hub.hubs(), draining=drain.draining(), sagas=sagas)
    return HttpResponse(body, content_type=content_type)


async def _saga_figures() -> list[tuple[str, int, int]]:
    """(saga, lag, parked events) from the database, when the project has sagas; nothing
    if the database does not answer within CHECK_TIMEOUT (the scrape still answers)."""
    if not registered_sagas():
        return []

    def read() -> list[tuple[str, int, int]]:
        try:
            return [(s.name, s.lag, s.parked) for s in saga_runtime.status()]
        finally:
            connections.close_all()

    try:
        return await asyncio.wait_for(asyncio.to_thread(read), CHECK_TIMEOUT)
    except Exception:  # noqa: BLE001 - metrics without the sagas' figures, this once
        return []


_head_check: tuple[asyncio.AbstractEventLoop, asyncio.Future] | None = None


def _log_head_check() -> asyncio.Future:
    """The log's highest position, read on a daemon thread of its own: not the thread of
    sync views (which may be what hangs), not an executor's (a hanging database would hold
    it, and an exiting process waits for executor threads). Probes that come while a read
    hangs wait for that read instead of starting another."""
    global _head_check
    loop = asyncio.get_running_loop()
    if _head_check is not None and _head_check[0] is loop and not _head_check[1].done():
        return _head_check[1]
    future = loop.create_future()
    # A probe that timed out does not look at it: mark its failure seen.
    future.add_done_callback(lambda done: done.cancelled() or done.exception())

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)

    def read() -> None:
        result, error = None, None
        try:
            result = high_water()
        except Exception as exc:
            error = exc
        finally:
            connections.close_all()  # no connection left behind (or back to the pool)
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop closed meanwhile
            pass

    threading.Thread(target=read, name="myko-readyz", daemon=True).start()
    _head_check = (loop, future)
    return future


def _failure(exc: Any) -> str:
    if isinstance(exc, TimeoutError):
        return f"error: no answer within {CHECK_TIMEOUT:g}s"
    return f"error: {type(exc).__name__}: {exc}"[:300]
