"""The frame path of a real daphne worker, and the session on it.

Every frame a connection sends goes through `Outbox.put`, which steps daphne's `send`
coroutine once by hand: daphne hands the frame to Twisted without suspending. Were a daphne
release to make `send` suspend (await a drain, say), frames would still arrive, through a
task, and the worker would log "the server's send suspended" once: the first test fails on
that line, and first finds a line the worker must log, to prove the log is really read.

The session middleware (`SessionFromCookie`) passes daphne's `send` on untouched, yet the
session cookie still reaches commands as `ctx.user`.
"""

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connections
from django.test import Client
from django.urls import path

from myko_django import routing
from tests.support.wsclient import WsClient

pytestmark = [pytest.mark.django_db(transaction=True)]

UPDATES = 300
# Big enough that the updates to a client that is not reading fill the socket buffers: the
# server's writes then back up, where a send that can suspend would suspend.
NOTE = "n" * 16_384
MAX_SIZE = 64 * 1024 * 1024  # frames that carry many such items
SUSPENDED = "send suspended"


def gadget(i: int) -> dict:
    return {"id": f"g-{i:03d}", "label": f"{i:03d}", "note": NOTE}


def upserted_ids(data: dict) -> list[str]:
    assert data["deletes"] == [], data["deletes"]
    ids = []
    for row in data["upserts"]:
        assert row["itemType"] == "Gadget"
        assert row["item"]["note"] == NOTE and row["item"]["label"] == row["item"]["id"][2:]
        ids.append(row["item"]["id"])
    return ids


class Subscription:
    """One query's responses as they arrive: sequences must follow each other, and items
    (each written once, in id order, by one command after another) arrive in that order."""

    def __init__(self, tx: str) -> None:
        self.tx = tx
        self.sequence = 0
        self.ids: list[str] = []
        self.responses = 0

    def receive(self, data: dict) -> None:
        assert data["tx"] == self.tx
        assert data["sequence"] == self.sequence + 1, (data["sequence"], self.sequence)
        self.sequence = data["sequence"]
        self.ids += upserted_ids(data)
        self.responses += 1
        assert self.ids == [gadget(i)["id"] for i in range(len(self.ids))], self.ids[-5:]


async def test_every_update_arrives_in_order_and_daphnes_send_never_suspends(daphne_workers):
    (worker,) = daphne_workers(1)
    # A watcher that does not read while the updates are made (websockets stops reading
    # the socket once `max_queue` frames wait), so the server's writes back up.
    watcher = await WsClient.socket(worker.url, max_size=MAX_SIZE, max_queue=2)
    writer = await WsClient.socket(worker.url, max_size=MAX_SIZE, timeout=30)
    try:
        watched = Subscription((await watcher.subscribe("GetAllGadgets", "Gadget"))[0])
        written = Subscription((await writer.subscribe("GetAllGadgets", "Gadget"))[0])

        # One command per update, sent without waiting for answers: a connection runs its
        # commands one after another, so they commit in this order.
        txs = [await writer.command("SetGadgets", {"items": [gadget(i)]}) for i in range(UPDATES)]
        answered = 0
        while answered < UPDATES:
            message = await writer.recv()
            if message["event"] == "ws:m:query-response":
                written.receive(message["data"])
                continue
            assert message == {
                "event": "ws:m:command-response",
                "data": {"response": 1, "tx": txs[answered]},
            }
            # Read-your-writes: the update a command made comes before its response.
            assert len(written.ids) > answered, (answered, len(written.ids))
            answered += 1
        assert len(written.ids) == UPDATES

        while len(watched.ids) < UPDATES:
            watched.receive(await watcher.expect("ws:m:query-response", timeout=30))
        assert watched.ids == written.ids
        await watcher.nothing(0.3)

        # The positive control: a command that raises makes the worker log at INFO.
        control = await writer.command("MakeGadgets", {"labels": ["x"], "failAfter": 0})
        error = await writer.expect("ws:m:command-error")
        assert error["tx"] == control and "failed after 0" in error["message"]
    finally:
        await watcher.close()
        await writer.close()

    worker.stop()  # its output is complete once it has exited
    log = worker.output()
    assert f"myko: command MakeGadgets (tx {control}) raised" in log, log[-3000:]
    assert SUSPENDED not in log, log[-3000:]
    assert "myko: sending a" not in log, log[-3000:]  # no frame failed to go out


@pytest.fixture
def alice_cookie(transactional_db) -> str:
    """The session cookie of a logged-in user, as a browser would send it."""
    get_user_model().objects.create_user("alice", password="secret")
    client = Client()
    assert client.login(username="alice", password="secret")
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


async def ask_who_am_i(url: str, cookie: str | None):
    headers = {"Cookie": cookie} if cookie else None
    async with await WsClient.socket(url, additional_headers=headers) as client:
        tx = await client.command("WhoAmI")
        data = await client.expect("ws:m:command-response")
        assert data["tx"] == tx
        return data["response"]


async def test_the_session_cookie_reaches_commands_as_the_user(daphne_workers, alice_cookie):
    (worker,) = daphne_workers(1)
    assert await ask_who_am_i(worker.url, alice_cookie) == "alice"
    assert await ask_who_am_i(worker.url, None) is None
    name = settings.SESSION_COOKIE_NAME
    assert await ask_who_am_i(worker.url, f"{name}=not-a-session") is None


async def test_the_websocket_stack_hands_the_servers_send_to_the_endpoint_untouched(
    monkeypatch, alice_cookie
):
    """In process: `routing.websocket_application()` with a recording endpoint in place of
    the consumer. Its `send` must be the server's own object (no wrapper per frame), and the
    scope must carry the session and the user the cookie names."""
    seen: dict = {}

    async def endpoint(scope, receive, send):
        seen["send"] = send
        seen["session"] = scope["session"].session_key
        seen["user"] = scope["user"].username  # resolved by AuthMiddleware already

    monkeypatch.setattr(routing, "websocket_urlpatterns", [path("myko", endpoint)])
    app = routing.websocket_application()

    async def receive():
        return {"type": "websocket.connect"}

    async def send(message):
        raise AssertionError(f"nothing should be sent: {message}")

    scope = {
        "type": "websocket",
        "path": "/myko",
        "headers": [(b"cookie", alice_cookie.encode())],
        "query_string": b"",
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    try:
        await app(scope, receive, send)
    finally:
        await sync_to_async(connections.close_all)()  # AuthMiddleware's thread's connection
    assert seen["send"] is send
    assert seen["session"] == alice_cookie.split("=", 1)[1]
    assert seen["user"] == "alice"
