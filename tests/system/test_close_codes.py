"""What daphne refuses before the application sees it is closed with the protocol's code,
not a dropped connection (issue 13, item 10; docs/protocol.md, "Connecting"): a message
over daphne's own size limit gets 1009, a text frame that is not UTF-8 gets 1007. A raw
`websockets` client against a real daphne (server/endpoint.py fix_daphne_close_codes)."""

import json

import pytest
import websockets

from myko_django.testing import DaphneServer

pytestmark = [pytest.mark.django_db(transaction=True)]

TIMEOUT = 10


@pytest.fixture
def small_daphne(transactional_db, tmp_path):
    """daphne with 1000-byte message and frame limits (MAX_MESSAGE_SIZE stays 16 MiB, so
    daphne's check is the one that acts)."""
    worker = DaphneServer(tmp_path, max_message=1000).start()
    yield worker
    worker.stop()
    print(worker.output()[-3000:])


async def _close_code(url: str, frame) -> int | None:
    async with websockets.connect(url, open_timeout=TIMEOUT, close_timeout=TIMEOUT) as ws:
        await ws.send('{"event":"ws:m:ping","data":{"id":"first"}}')
        assert "first" in await ws.recv()
        await frame(ws)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    return closed.value.rcvd.code if closed.value.rcvd else None


async def test_a_message_over_daphnes_limit_is_closed_with_1009(small_daphne):
    async def too_big(ws):
        await ws.send("x" * 2000)

    async def too_big_in_fragments(ws):
        await ws.send(["x" * 600, "x" * 600])

    assert await _close_code(small_daphne.url, too_big) == 1009
    assert await _close_code(small_daphne.url, too_big_in_fragments) == 1009
    assert await _close_code(small_daphne.url, _binary_too_big) == 1009
    # The worker goes on serving.
    async with websockets.connect(small_daphne.url, open_timeout=TIMEOUT) as ws:
        await ws.send('{"event":"ws:m:ping","data":{"id":"after"}}')
        assert "after" in await ws.recv()


async def _binary_too_big(ws):
    await ws.send(b"\x81" + b"\0" * 2000)


async def test_a_text_frame_that_is_not_utf8_is_closed_with_1007(small_daphne):
    async def not_utf8(ws):
        await ws.send(b'{"event":"ws:m:ping","data":"\xff\xfe"}', text=True)

    assert await _close_code(small_daphne.url, not_utf8) == 1007
    assert "Traceback" not in small_daphne.output()


async def test_replies_to_a_closing_socket_are_not_a_traceback_each(small_daphne):
    """Issue 13, item 11: pings answered after daphne began closing the socket (here for an
    oversized message) logged one traceback per reply; now one line per connection."""
    for _ in range(3):
        # max_queue=None: the replies are not read, yet must not hold up the close frame.
        ws = await websockets.connect(small_daphne.url, open_timeout=TIMEOUT, max_queue=None)
        for i in range(300):
            await ws.send(json.dumps({"event": "ws:m:ping", "data": {"id": str(i)}}))
        await ws.send("x" * 2000)
        await ws.wait_closed()
    async with websockets.connect(small_daphne.url, open_timeout=TIMEOUT) as ws:
        await ws.send('{"event":"ws:m:ping","data":{"id":"after"}}')
        assert "after" in await ws.recv()
    output = small_daphne.output()
    assert "Traceback" not in output
    assert "never retrieved" not in output
