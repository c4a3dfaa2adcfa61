"""Review of the recheck (issue 9): what must make an open connection take its user again,
or continue as anonymous."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission

from myko_django.auth import issue_token
from myko_django.server import authentication

pytestmark = [pytest.mark.django_db]

User = get_user_model()


def bearer(token: str) -> dict:
    return {"headers": [(b"authorization", f"Bearer {token}".encode())], "query_string": b""}


@pytest.fixture
def alice():
    return User.objects.create_user("alice", password="secret")


def test_review_recheck_sees_a_groups_permissions_and_the_superuser_flag_change(alice):
    group = Group.objects.create(name="readers")
    alice.groups.add(group)
    identity = authentication.identify_sync(bearer(issue_token(alice)))
    job = [(identity.authenticator, [identity.credential])]
    group.permissions.add(Permission.objects.get(codename="view_vault"))  # the group's, not hers
    [[(user, changed)]] = authentication._recheck(job)
    assert changed != identity.fingerprint and user.has_perm("testapp.view_vault")
    User.objects.filter(pk=alice.pk).update(is_superuser=True)
    [[(user, root)]] = authentication._recheck(job)
    assert root != changed and user.is_superuser
    User.objects.filter(pk=alice.pk).delete()
    assert authentication._recheck(job) == [[None]]


def test_review_a_password_change_ends_the_users_tokens(alice):
    """README ("Logging in"): "after a logout, a password change, a deactivation, an expired
    or revoked token, the connection continues as anonymous". A session does; a token kept
    working after the password change that was meant to lock a thief out (Django's own
    password-reset tokens, and sessions, are tied to the password hash)."""
    identity = authentication.identify_sync(bearer(issue_token(alice)))
    job = [(identity.authenticator, [identity.credential])]
    assert authentication._recheck(job)[0][0] is not None  # valid until the change
    alice.set_password("changed after a leak")
    alice.save()
    assert authentication._recheck(job) == [[None]]
    assert authentication.identify_sync(bearer(issue_token(alice))).user == alice  # a new one
