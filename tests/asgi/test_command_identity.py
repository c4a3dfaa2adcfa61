"""Command idempotency over the protocol (issue 13, item 9): a tx belongs to a user (an
anonymous client's short tx: to its connection), and a retry must carry the same
parameters."""

import uuid

import pytest

from project.demo.models import Target
from tests.support.data import count_rows, db

pytestmark = [pytest.mark.django_db(transaction=True)]


async def test_another_anonymous_client_reusing_a_tx_runs_its_own_command(connect):
    await db(
        lambda: Target.objects.bulk_create([Target(id="a", name="a"), Target(id="b", name="b")])
    )
    first, second = await connect(), await connect()
    tx = await first.command("DeleteTargets", {"ids": ["a"]})
    assert await first.expect("ws:m:command-response") == {
        "response": {"deletedCount": 1},
        "tx": tx,
    }
    # Before: the second client got the first one's stored {"deletedCount": 1} back, and
    # "b" was never deleted.
    await second.command("DeleteTargets", {"ids": ["b"]}, tx=tx)
    assert await second.expect("ws:m:command-response") == {
        "response": {"deletedCount": 1},
        "tx": tx,
    }
    assert await count_rows("demo.Target") == 0


async def test_a_retry_with_other_parameters_gets_an_error(client):
    tx = await client.command("SlowCount", {"label": "a"})
    assert await client.expect("ws:m:command-response") == {"response": 1, "tx": tx}
    await client.command("SlowCount", {"label": "b"}, tx=tx)
    assert await client.expect("ws:m:command-error") == {
        "tx": tx,
        "commandId": "SlowCount",
        "message": f"SlowCount: tx {tx!r} was already used for a SlowCount with other "
        "parameters; a retry must send the same parameters, a new command needs a new tx",
    }
    await client.command("SlowCount", {"label": "a"}, tx=tx)  # the true retry: replayed
    assert await client.expect("ws:m:command-response") == {"response": 1, "tx": tx}
    assert await count_rows("testapp.Gadget") == 1


async def test_an_anonymous_uuid_tx_is_recognised_on_another_connection(connect):
    """A long random tx (myko's clients send UUIDs) is no other client's: a client that
    reconnects and re-sends its command is answered from the first run, as long as the
    parameters are the same."""
    tx = str(uuid.uuid4())
    first, second = await connect(), await connect()
    await first.command("SlowCount", {"label": "u"}, tx=tx)
    assert await first.expect("ws:m:command-response") == {"response": 1, "tx": tx}
    await second.command("SlowCount", {"label": "u"}, tx=tx)
    assert await second.expect("ws:m:command-response") == {"response": 1, "tx": tx}
    await second.command("SlowCount", {"label": "other"}, tx=tx)
    error = await second.expect("ws:m:command-error")
    assert "was already used for a SlowCount with other parameters" in error["message"]
    assert await count_rows("testapp.Gadget") == 1
