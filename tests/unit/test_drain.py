"""server/drain.py without a server: which sockets close when, and how SIGTERM is chained to
the server's own handler. tests/system/test_operations.py drains a real daphne."""

from __future__ import annotations

import asyncio
import signal

import pytest

from myko_django.server import drain
from myko_django.server.drain import Drain


class Socket:
    """A tracked connection: `busy` while it has commands; `close` records the time."""

    def __init__(self, d: Drain, busy: bool = False, goes_away: bool = True) -> None:
        self.busy = busy
        self.closed_at: float | None = None
        self.drain = d
        self.goes_away = goes_away  # the client answers the close frame
        d.track(self, self.close)

    async def close(self) -> None:
        self.closed_at = asyncio.get_running_loop().time()
        if self.goes_away:
            self.drain.forget(self)


async def test_idle_sockets_close_at_once_busy_ones_when_done():
    d = Drain()
    loop = asyncio.get_running_loop()
    idle, busy = Socket(d), Socket(d, busy=True)
    started = loop.time()
    running = loop.create_task(d.run(timeout=5))
    await asyncio.sleep(0.1)
    assert d.draining
    assert idle.closed_at is not None and idle.closed_at - started < 0.05
    assert busy.closed_at is None  # its command still runs
    busy.busy = False
    await asyncio.wait_for(running, 1)
    assert busy.closed_at is not None
    assert d.sockets == {}


async def test_a_socket_still_busy_at_the_deadline_is_closed_anyway():
    d = Drain()
    loop = asyncio.get_running_loop()
    stuck = Socket(d, busy=True)
    started = loop.time()
    await asyncio.wait_for(d.run(timeout=0.2), 2)
    assert 0.2 <= stuck.closed_at - started < 0.4


async def test_a_socket_opened_while_draining_is_closed_too():
    d = Drain()
    running = asyncio.get_running_loop().create_task(d.run(timeout=1))
    Socket(d, busy=True)  # keeps the drain going
    await asyncio.sleep(0.05)
    late = Socket(d)
    await asyncio.sleep(0.1)
    assert late.closed_at is not None
    running.cancel()


async def test_clients_that_never_answer_the_close_get_a_grace_then_the_drain_ends(monkeypatch):
    monkeypatch.setattr(drain, "GRACE", 0.1)
    d = Drain()
    silent = Socket(d, goes_away=False)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(d.run(timeout=0.1), 2)
    assert silent.closed_at is not None
    assert 0.2 <= loop.time() - started < 0.5
    assert silent in d.sockets  # left to the server


@pytest.fixture
def sigterm():
    """Restores this process's SIGTERM handler after the test."""
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


def test_nothing_is_installed_without_a_server_handler_to_chain_to(sigterm):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    d = Drain()
    assert not d.install(asyncio.new_event_loop())
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


async def test_sigterm_drains_then_calls_the_servers_handler_once(sigterm, settings):
    settings.MYKO = {"DRAIN_TIMEOUT": 0.3}
    calls = []
    signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    d = Drain()
    assert d.install(asyncio.get_running_loop())
    assert not d.install(asyncio.get_running_loop())  # once per process
    busy = Socket(d, busy=True)
    signal.raise_signal(signal.SIGTERM)
    await asyncio.sleep(0.1)
    assert d.draining and calls == []  # draining, the server still runs
    await asyncio.wait_for(d.task, 2)
    assert busy.closed_at is not None
    assert calls == [signal.SIGTERM]


async def test_a_second_sigterm_stops_the_server_at_once(sigterm, settings):
    settings.MYKO = {"DRAIN_TIMEOUT": 10}
    calls = []
    signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    d = Drain()
    d.install(asyncio.get_running_loop())
    Socket(d, busy=True)
    signal.raise_signal(signal.SIGTERM)
    await asyncio.sleep(0.05)
    assert calls == []
    signal.raise_signal(signal.SIGTERM)
    assert calls == [signal.SIGTERM]
    d.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await d.task
    assert calls == [signal.SIGTERM]  # not twice
