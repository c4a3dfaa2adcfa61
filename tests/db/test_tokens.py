"""Authentication without a server: tokens (issue, read, expire, revoke, the management
command), the session and token authenticators at connect and in their batched recheck,
the per-command userToken lookup, and the batched permission preload."""

from __future__ import annotations

import time
from importlib import import_module
from io import StringIO

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import AnonymousUser, Group, Permission
from django.contrib.sessions.models import Session
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from myko_django import auth
from myko_django.auth import (
    SessionAuthenticator,
    TokenAuthenticator,
    issue_token,
    read_token,
    revoke_tokens,
)
from myko_django.models import TokenSalt
from myko_django.server import authentication

pytestmark = [pytest.mark.django_db]

User = get_user_model()


@pytest.fixture
def alice():
    return User.objects.create_user("alice", password="secret")


def bearer(token: str) -> dict:
    return {"headers": [(b"authorization", f"Bearer {token}".encode())], "query_string": b""}


def fresh(user):
    return User.objects.get(pk=user.pk)


# ---- tokens ----------------------------------------------------------------------------


def test_a_token_names_its_user_until_it_expires(alice):
    token = issue_token(alice)
    assert "." in token and ":" not in token and "=" not in token  # no escaping needed
    claim = read_token(token)
    assert claim.user_pk == str(alice.pk)
    assert claim.expires == pytest.approx(time.time() + 7 * 24 * 3600, abs=5)
    assert TokenAuthenticator().authenticate_token(token) == alice
    short = issue_token(alice, max_age=0.2)
    assert TokenAuthenticator().authenticate_token(short) == alice
    time.sleep(0.3)
    assert read_token(short) is None
    assert TokenAuthenticator().authenticate_token(short) is None


def test_token_max_age_setting(alice, settings):
    settings.MYKO = {**settings.MYKO, "TOKEN_MAX_AGE": 60}
    assert read_token(issue_token(alice)).expires == pytest.approx(time.time() + 60, abs=5)


@pytest.mark.parametrize(
    "bad",
    ["", "x", "a.b", "a" * 5000, None, 12, ["x"]],
)
def test_malformed_tokens_name_nobody(bad):
    assert read_token(bad) is None


def test_a_tampered_or_foreign_token_names_nobody(alice, settings):
    token = issue_token(alice)
    data, _, signature = token.partition(".")
    other = User.objects.create_user("mallory")
    forged = auth.signing.b64_encode(
        auth.json.dumps({"u": str(other.pk), "e": time.time() + 99, "s": "x"}).encode()
    ).decode()
    assert read_token(f"{forged}.{signature}") is None
    assert read_token(f"{data}.{signature[:-2]}xx") is None
    settings.SECRET_KEY = "another-secret-key-altogether-0123456789"
    assert read_token(token) is None


def test_a_token_survives_a_secret_key_rotation_through_the_fallbacks(alice, settings):
    token = issue_token(alice)
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "the-new-secret-key-0123456789-abcdefghijklmnop"
    assert TokenAuthenticator().authenticate_token(token) == alice


def test_revoking_invalidates_every_earlier_token_only(alice):
    first, second = issue_token(alice), issue_token(alice)
    assert TokenSalt.objects.filter(user=alice).count() == 1
    revoke_tokens(alice)
    later = issue_token(alice)
    authenticator = TokenAuthenticator()
    assert authenticator.authenticate_token(first) is None
    assert authenticator.authenticate_token(second) is None
    assert authenticator.authenticate_token(later) == alice


def test_revoking_a_user_who_never_had_a_token(alice):
    revoke_tokens(alice)
    assert TokenAuthenticator().authenticate_token(issue_token(alice)) == alice


def test_tokens_of_inactive_or_deleted_users_name_nobody(alice):
    token = issue_token(alice)
    alice.is_active = False
    alice.save()
    assert TokenAuthenticator().authenticate_token(token) is None
    with pytest.raises(ValueError):
        issue_token(AnonymousUser())
    bob = User.objects.create_user("bob")
    token = issue_token(bob)
    bob.delete()
    assert TokenAuthenticator().authenticate_token(token) is None


@pytest.mark.parametrize("max_age", [0, -1, float("nan"), True, "60"])
def test_issue_token_refuses_a_bad_max_age(alice, max_age):
    with pytest.raises(ValueError):
        issue_token(alice, max_age=max_age)


def test_the_token_comes_from_the_header_or_the_query_string(alice):
    token = issue_token(alice)
    authenticator = TokenAuthenticator()
    assert authenticator.authenticate(bearer(token))[0] == alice
    assert authenticator.authenticate({"headers": [], "query_string": b""}) is None
    by_query = {"headers": [], "query_string": f"x=1&access_token={token}".encode()}
    assert authenticator.authenticate(by_query)[0] == alice
    lower = {"headers": [(b"authorization", f"bearer  {token} ".encode())]}
    assert authenticator.authenticate(lower)[0] == alice
    basic = {"headers": [(b"authorization", b"Basic YWxpY2U6c2VjcmV0")]}
    assert authenticator.authenticate(basic) is None
    assert authenticator.authenticate(bearer("nonsense")) is None


def test_the_management_command_prints_a_working_token(alice):
    out = StringIO()
    call_command("myko_token", "alice", "--max-age", "30", stdout=out)
    token = out.getvalue().strip()
    assert TokenAuthenticator().authenticate_token(token) == alice
    assert read_token(token).expires == pytest.approx(time.time() + 30, abs=5)
    call_command("myko_token", "alice", "--revoke", stderr=StringIO())
    assert TokenAuthenticator().authenticate_token(token) is None
    with pytest.raises(CommandError, match="No user 'nobody'"):
        call_command("myko_token", "nobody")
    with pytest.raises(CommandError):
        call_command("myko_token", "alice", "--max-age", "0")
    alice.is_active = False
    alice.save()
    with pytest.raises(CommandError, match="inactive"):
        call_command("myko_token", "alice")


# ---- recheck, batched -------------------------------------------------------------------


def test_token_recheck_is_a_few_queries_for_any_number_of_tokens(alice):
    users = [alice, *(User.objects.create_user(f"u{i}") for i in range(20))]
    claims = [read_token(issue_token(u)) for u in users for _ in range(3)]
    authenticator = TokenAuthenticator()
    with CaptureQueriesContext(connection) as queries:
        found = authenticator.recheck(claims)
    assert [u.pk for u in found] == [c for c in (u.pk for u in users) for _ in range(3)]
    assert len(queries) == 3  # salts, users, their groups
    revoke_tokens(users[1])
    users[2].is_active = False
    users[2].save()
    expired = read_token(issue_token(users[3], max_age=0.05))
    time.sleep(0.1)
    found = authenticator.recheck([*claims[:9], expired])
    assert [u is not None for u in found] == [True] * 3 + [False] * 6 + [False]


def session_of(username: str, password: str = "secret") -> str:
    client = Client()
    assert client.login(username=username, password=password)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def session_scope(key: str) -> dict:
    store = import_module(settings.SESSION_ENGINE).SessionStore
    return {"session": store(key), "headers": [], "query_string": b""}


def test_the_session_names_its_user_until_logout_password_change_or_deactivation(alice):
    bob = User.objects.create_user("bob", password="secret")
    carol = User.objects.create_user("carol", password="secret")
    dave = User.objects.create_user("dave", password="secret")
    authenticator = SessionAuthenticator()
    credentials = []
    for user in (alice, bob, carol, dave):
        found, credential = authenticator.authenticate(session_scope(session_of(user.username)))
        assert found == user
        credentials.append(credential)
    assert authenticator.authenticate(session_scope("no-such-session")) is None
    assert authenticator.authenticate({"headers": []}) is None

    with CaptureQueriesContext(connection) as queries:
        assert authenticator.recheck(credentials) == [alice, bob, carol, dave]
    assert len(queries) == 3  # sessions, users, their groups

    Session.objects.filter(pk=credentials[0].session_key).delete()  # alice logs out
    bob.set_password("changed")  # bob changes his password elsewhere
    bob.save()
    carol.is_active = False
    carol.save()
    assert authenticator.recheck(credentials) == [None, None, None, dave]
    Session.objects.filter(pk=credentials[3].session_key).update(expire_date="2000-01-01T00:00:00Z")
    assert authenticator.recheck(credentials[3:]) == [None]


# ---- what the server does with them -------------------------------------------------------


def test_identify_tries_the_authenticators_in_order(alice, settings):
    bob = User.objects.create_user("bob", password="secret")
    scope = {**session_scope(session_of("alice")), **bearer(issue_token(bob))}
    identity = authentication.identify_sync(scope)
    assert identity.user == alice and isinstance(identity.authenticator, SessionAuthenticator)
    settings.MYKO = {
        **settings.MYKO,
        "AUTHENTICATORS": [
            "myko_django.auth.TokenAuthenticator",
            "myko_django.auth.SessionAuthenticator",
        ],
    }
    assert authentication.identify_sync(scope).user == bob
    settings.MYKO = {**settings.MYKO, "AUTHENTICATORS": []}
    nobody = authentication.identify_sync(scope)
    assert nobody.user.is_anonymous and nobody.authenticator is None


def test_user_for_token(alice):
    assert authentication.user_for_token(issue_token(alice)) == alice
    assert authentication.user_for_token("garbage") is None


def test_the_recheck_notices_changed_permissions_and_groups(alice):
    identity = authentication.identify_sync(bearer(issue_token(alice)))
    job = [(identity.authenticator, [identity.credential])]
    [[(user, same)]] = authentication._recheck(job)
    assert same == identity.fingerprint
    alice.user_permissions.add(Permission.objects.get(codename="view_gadget"))
    [[(user, changed)]] = authentication._recheck(job)
    assert changed != identity.fingerprint and user.has_perm("testapp.view_gadget")
    group = Group.objects.create(name="readers")
    alice.groups.add(group)
    [[(_, grouped)]] = authentication._recheck(job)
    assert grouped != changed
    alice.is_active = False
    alice.save()
    assert authentication._recheck(job) == [[None]]


# ---- permissions, preloaded in a batch ----------------------------------------------------


def test_preloaded_permissions_equal_djangos_and_need_no_query_later():
    """Pins the Django internals the batch relies on: ModelBackend caches a user's
    permissions in `_user_perm_cache` and `_group_perm_cache` and reads nothing else."""
    view, change = (Permission.objects.get(codename=c) for c in ("view_gadget", "change_gadget"))
    group = Group.objects.create(name="editors")
    group.permissions.add(change)
    Group.objects.create(name="empty")
    plain = User.objects.create_user("plain")
    direct = User.objects.create_user("direct")
    direct.user_permissions.add(view)
    grouped = User.objects.create_user("grouped")
    grouped.groups.add(group, Group.objects.get(name="empty"))
    both = User.objects.create_user("both")
    both.user_permissions.add(view)
    both.groups.add(group)
    boss = User.objects.create_superuser("boss")
    users = [fresh(u) for u in (plain, direct, grouped, both, boss)]
    with CaptureQueriesContext(connection) as queries:
        authentication.preload_permissions(users)
    assert len(queries) == 3  # every permission (for the superuser), user's, groups'
    expected = [
        (f.get_all_permissions(), f.get_user_permissions(), f.get_group_permissions())
        for f in (fresh(u) for u in users)
    ]
    with CaptureQueriesContext(connection) as queries:
        for user, (every, own, from_groups) in zip(users, expected, strict=True):
            assert user.get_all_permissions() == every
            assert user.get_user_permissions() == own
            assert user.get_group_permissions() == from_groups
            assert user.has_perm("testapp.view_gadget") == ("testapp.view_gadget" in every)
    assert len(queries) == 0
    assert users[0].get_all_permissions() == set()
    assert users[3].get_all_permissions() == {"testapp.view_gadget", "testapp.change_gadget"}


def test_preload_falls_back_to_asking_each_user_with_other_backends(settings):
    settings.AUTHENTICATION_BACKENDS = ["tests.db.test_tokens.CustomBackend"]
    user = User.objects.create_user("plain")
    authentication.preload_permissions([user])
    assert user.get_all_permissions() == {"custom.perm"}


class CustomBackend(ModelBackend):
    def get_all_permissions(self, user_obj, obj=None):
        return {"custom.perm"}


def test_a_sweep_is_a_few_queries_however_many_connections():
    """What the server's recheck does every AUTH_RECHECK_INTERVAL, for 40 connections of 20
    users (half by session, half by token): a fixed number of queries."""
    identities = []
    for i in range(20):
        user = User.objects.create_user(f"u{i}", password="secret")
        user.user_permissions.add(Permission.objects.get(codename="view_gadget"))
        scope = session_scope(session_of(user.username)) if i % 2 else bearer(issue_token(user))
        identities += [authentication.identify_sync(scope) for _ in range(2)]
    by_authenticator: dict = {}
    for identity in identities:
        by_authenticator.setdefault(identity.authenticator, []).append(identity)
    jobs = [(a, [i.credential for i in found]) for a, found in by_authenticator.items()]
    with CaptureQueriesContext(connection) as queries:
        results = authentication._recheck(jobs)
    # sessions + users + groups, salts + users + groups, user and group permissions
    assert len(queries) == 8
    fingerprints = [r[1] for outcome in results for r in outcome]
    expected = [i.fingerprint for found in by_authenticator.values() for i in found]
    assert fingerprints == expected
    with CaptureQueriesContext(connection) as queries:
        for outcome in results:
            for user, _ in outcome:
                assert user.has_perm("testapp.view_gadget")
                assert [g.pk for g in user.groups.all()] == []
    assert len(queries) == 0
