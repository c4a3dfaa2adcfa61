"""The Python client's state without a server: responses applied as docs/protocol.md says."""

from myko_django.client import Client
from tests.support.data import target


async def test_responses_apply_deletes_then_upserts_and_warn_on_gaps(caplog):
    query = Client("ws://unused").query("GetAllTargets", "Target")

    def response(sequence: int, upserts: list[dict], deletes: list[str]) -> None:
        up = [{"item": item, "itemType": "Target"} for item in upserts]
        query._apply({"tx": query.tx, "sequence": sequence, "upserts": up, "deletes": deletes})

    response(0, [target("a", "A"), target("b", "B")], [])
    response(1, [target("a", "A2")], ["a"])  # deleted, then upserted again: present
    assert query.items == {"a": target("a", "A2"), "b": target("b", "B")}
    assert not caplog.records
    response(3, [], ["b"])  # a gap: warned, still applied
    assert query.items == {"a": target("a", "A2")} and query.sequence == 3
    assert "sequence 3 after 1" in caplog.text
    response(0, [target("z", "Z")], [])  # a fresh snapshot replaces the state
    assert query.items == {"z": target("z", "Z")} and await query.ready() == query.items
