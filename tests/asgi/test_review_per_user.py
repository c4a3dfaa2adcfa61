"""Review of per-user queries (a `user` parameter, issue 9): the result is computed from the
user object, so a user whose flags change (the recheck hands the connection a fresh user)
must not keep, nor share with a new connection, a result computed for the old one."""

from __future__ import annotations

import asyncio

import pytest
from django.contrib.auth.models import User

from myko_django.auth import issue_token
from myko_django.items import operations
from myko_django.permissions import AllowAny
from tests.support.data import db, items_by_id
from tests.support.wsclient import WsClient
from tests.testapp.models import Vault

pytestmark = [pytest.mark.django_db(transaction=True)]


def everything_for_staff(*, user):
    """Staff see every Vault, others none (a predicate: its key is the query's, with the
    user's)."""
    staff = bool(getattr(user, "is_staff", False))
    return lambda item: staff


@pytest.fixture
def staff_vaults():
    operations.query("StaffVaults", item="Vault", permission=AllowAny)(everything_for_staff)
    yield
    operations.unregister("query", "StaffVaults")


async def test_review_per_user_query_follows_the_user_losing_a_flag(asgi_app, staff_vaults):
    def setup():
        Vault.objects.create(id="v1", name="gold")
        user = User.objects.create_user("sam", is_staff=True)
        return user.pk, issue_token(user)

    pk, token = await db(setup)
    headers = [(b"authorization", f"Bearer {token}".encode())]
    first = await WsClient.asgi(asgi_app, "json", headers=headers)
    try:
        _, snapshot = await first.subscribe("StaffVaults", "Vault")
        assert list(items_by_id(snapshot)) == ["v1"]  # staff: everything
        await db(lambda: User.objects.filter(pk=pk).update(is_staff=False))
        await asyncio.sleep(1.5)  # the recheck (every 0.5 s) hands over the fresh user
        await db(lambda: Vault.objects.create(id="v2", name="silver"))
        while True:  # what the demoted user's open query is told from now on
            data = await first.expect("ws:m:query-response", timeout=2)
            assert "v2" not in items_by_id(data), ("still sees as staff", data)
            if data["sequence"] == 0 or data["deletes"]:
                break  # restarted or told v1 is gone: no longer the staff result
        # A second connection of the demoted user shares nothing computed as staff.
        second = await WsClient.asgi(asgi_app, "json", headers=headers)
        try:
            _, snapshot = await second.subscribe("StaffVaults", "Vault")
            assert items_by_id(snapshot) == {}, snapshot
        finally:
            await second.close()
    finally:
        await first.close()
