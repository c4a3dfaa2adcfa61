"""The consumer's Outbox: frames go out in order, at once when the server's send does not
suspend, behind a task when it does, and a failing send never silences the connection."""

import asyncio

import pytest

from myko_django.server.endpoint import Outbox


class Server:
    """A fake ASGI send; `hold` makes the next sends wait until `release()`."""

    def __init__(self) -> None:
        self.sent: list = []
        self.gate: asyncio.Future | None = None
        self.fail = set()

    def hold(self) -> None:
        self.gate = asyncio.get_running_loop().create_future()

    def release(self) -> None:
        gate, self.gate = self.gate, None
        gate.set_result(None)

    async def send(self, message: dict) -> None:
        frame = message.get("text", message.get("bytes"))
        if frame in self.fail:
            raise OSError("socket gone")
        if self.gate is not None:
            await self.gate
        self.sent.append(frame)


async def test_a_send_that_does_not_suspend_goes_out_at_once_without_a_task():
    server = Server()
    outbox = Outbox(server.send)
    outbox.put("a")
    outbox.put(b"b")
    assert server.sent == ["a", b"b"]
    assert outbox.task is None


async def test_frames_put_while_a_send_is_suspended_follow_it_in_order():
    server = Server()
    outbox = Outbox(server.send)
    server.hold()
    outbox.put("1")
    outbox.put("2")
    outbox.put("3")
    assert server.sent == [] and outbox.task is not None
    await asyncio.sleep(0)
    server.release()
    await outbox.task
    assert server.sent == ["1", "2", "3"]
    assert outbox.task is None
    outbox.put("4")
    assert server.sent == ["1", "2", "3", "4"]


async def test_a_failing_send_is_logged_and_later_frames_still_go(caplog):
    server = Server()
    server.fail = {"bad"}
    outbox = Outbox(server.send)
    outbox.put("bad")  # fails on the spot
    outbox.put("good")
    server.hold()
    outbox.put("first")  # suspends: the next ones queue behind it
    outbox.put("bad")  # fails inside the task, which goes on
    outbox.put("later")
    server.release()
    await outbox.task
    assert server.sent == ["good", "first", "later"]
    assert caplog.text.count("sending a") == 2


async def test_close_cancels_a_suspended_send():
    server = Server()
    outbox = Outbox(server.send)
    server.hold()
    outbox.put("x")
    outbox.put("y")
    task = outbox.task
    outbox.close()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert server.sent == [] and not outbox.queue
