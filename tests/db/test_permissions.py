"""Who may do what, at the level every transport goes through: resolving queries and
reports, running commands, applying client events. Vault keeps the library's default
(Django's model permissions); the demo's Note shows row visibility."""

import pytest
from django.contrib.auth.models import AnonymousUser, Permission, User

from myko_django.items.operations import resolve_query, resolve_report
from myko_django.items.permissions import PermissionDenied
from myko_django.log.commands import CommandError, run_command
from myko_django.log.writepath import apply_events
from myko_django.testing import LiveSession
from project.demo.models import Note
from tests.testapp.models import Vault

pytestmark = pytest.mark.django_db(transaction=True)


def user_with(*codenames: str, **flags) -> User:
    """A fresh user holding these permissions of the test app (loaded, as a connection
    loads them when the user connects)."""
    user = User.objects.create_user(f"u{User.objects.count()}", **flags)
    for codename in codenames:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    user = User.objects.get(pk=user.pk)  # Django caches permissions per user object
    user.get_all_permissions()
    return user


def event(change: str, item: dict, item_type: str = "Vault") -> dict:
    return {"changeType": change, "itemType": item_type, "item": item, "tx": "e"}


def denied(call) -> str:
    with pytest.raises((PermissionDenied, CommandError)) as info:
        call()
    message = str(info.value)
    assert message.startswith("Permission denied"), message
    return message


def test_anonymous_may_do_nothing_with_an_item_by_default():
    vault = Vault.objects.create(name="gold")
    for who in (None, AnonymousUser()):
        assert "anonymous may not view Vaults" in denied(
            lambda who=who: resolve_query("GetAllVaults", "Vault", {}, who)
        )
        denied(lambda who=who: resolve_query("GetVaultsByIds", "Vault", {"ids": ["x"]}, who))
        denied(lambda who=who: resolve_report("CountAllVaults", {}, who))
        denied(lambda who=who: resolve_report("GetVaultById", {"id": vault.pk}, who))
        denied(lambda who=who: run_command("DeleteVault", {"id": vault.pk}, tx="t", user=who))
        denied(lambda who=who: run_command("TouchVault", {"id": vault.pk}, tx="t", user=who))
        _, rejected = apply_events(
            [event("SET", {"id": "new", "name": "x"}), event("DEL", {"id": vault.pk})], user=who
        )
        assert [m.split(":")[0] for _, _, m in rejected] == ["Permission denied"] * 2
    assert list(Vault.objects.values_list("name", flat=True)) == ["gold"]


def test_view_lets_a_user_query_and_nothing_more():
    vault = Vault.objects.create(name="gold")
    viewer = user_with("view_vault")
    assert resolve_query("GetAllVaults", "Vault", {}, viewer)[0] == "Vault"
    assert resolve_report("CountAllVaults", {}, viewer).kind == "count"
    assert run_command("TouchVault", {"id": vault.pk}, tx="t1", user=viewer).response == "gold"
    _, rejected = apply_events(
        [
            event("SET", {"id": "new", "name": "x"}),
            event("SET", {"id": vault.pk, "name": "lead"}),
            event("DEL", {"id": vault.pk}),
        ],
        user=viewer,
    )
    assert [m for _, _, m in rejected] == [
        f"Permission denied: {viewer} may not add Vaults",
        f"Permission denied: {viewer} may not change Vaults",
        f"Permission denied: {viewer} may not delete Vaults",
    ]
    denied(lambda: run_command("DeleteVault", {"id": vault.pk}, tx="t2", user=viewer))
    denied(lambda: run_command("DeleteVaults", {"ids": [vault.pk]}, tx="t3", user=viewer))
    assert list(Vault.objects.values_list("name", flat=True)) == ["gold"]


def test_add_change_and_delete_each_allow_their_own_write():
    vault = Vault.objects.create(name="gold")
    changer = user_with("view_vault", "change_vault")
    _, rejected = apply_events(
        [event("SET", {"id": vault.pk, "name": "lead"}), event("SET", {"id": "n", "name": "x"})],
        user=changer,
    )
    assert [i for i, _, _ in rejected] == [1]  # the change passed, the new id did not
    assert Vault.objects.get(pk=vault.pk).name == "lead"
    adder = user_with("add_vault")
    assert apply_events([event("SET", {"id": "n", "name": "x"})], user=adder)[1] == []
    deleter = user_with("delete_vault")
    assert run_command("DeleteVaults", {"ids": ["n"]}, tx="t", user=deleter).response == {
        "deletedCount": 1
    }
    assert apply_events([event("DEL", {"id": vault.pk})], user=deleter)[1] == []
    assert not Vault.objects.exists()


def test_superusers_may_do_everything_and_inactive_users_nothing():
    root = user_with(is_superuser=True)
    assert apply_events([event("SET", {"id": "v", "name": "x"})], user=root)[1] == []
    assert resolve_query("GetAllVaults", "Vault", {}, root)[0] == "Vault"
    asleep = user_with("view_vault", is_superuser=True, is_active=False)
    denied(lambda: resolve_query("GetAllVaults", "Vault", {}, asleep))
    denied(lambda: run_command("TouchVault", {"id": "v"}, tx="t", user=asleep))


def test_a_user_command_runs_only_after_its_permission_passes():
    vault = Vault.objects.create(name="gold")
    denied(lambda: run_command("TouchVault", {"id": vault.pk}, tx="t1", user=None))
    member = user_with()  # no model permission: a user command asks only for a sign-in
    assert run_command("TouchVault", {"id": vault.pk}, tx="t2", user=member).response == "gold"


# ---- rows each user may see ----------------------------------------------------------


def test_users_see_and_change_only_their_own_notes():
    alice, bob = user_with(), user_with()
    mine = Note.objects.create(owner=alice, text="alice's")
    Note.objects.create(owner=bob, text="bob's")
    with LiveSession(user=alice) as session:
        notes = session.query("GetAllNotes", "Note")
        assert [n["text"] for n in notes.items.values()] == ["alice's"]
        count = session.report("CountAllNotes")
        assert count.value == {"count": 1}
        assert session.report("GetNoteById", {"id": mine.pk}).value["text"] == "alice's"
    others = resolve_report("GetNoteById", {"id": mine.pk}, bob)
    with LiveSession(user=bob) as session:
        assert session.report("GetNoteById", {"id": mine.pk}).value is None
        assert others.key != resolve_report("GetNoteById", {"id": mine.pk}, alice).key
    # Bob can neither change nor delete Alice's note, nor write a note for her.
    _, rejected = apply_events(
        [
            event("SET", {"id": mine.pk, "ownerId": str(bob.pk), "text": "mine now"}, "Note"),
            event("SET", {"id": "n2", "ownerId": str(alice.pk), "text": "from bob"}, "Note"),
        ],
        user=bob,
    )
    assert [m.split(":")[0] for _, _, m in rejected] == ["Permission denied"] * 2
    assert apply_events([event("DEL", {"id": mine.pk}, "Note")], user=bob)[1] == []  # unseen
    with pytest.raises(CommandError, match="Note not found"):
        run_command("DeleteNote", {"id": mine.pk}, tx="t", user=bob)
    assert Note.objects.get(pk=mine.pk).text == "alice's"
    # Alice cannot give her note away from under herself over the wire either.
    _, rejected = apply_events(
        [event("SET", {"id": mine.pk, "ownerId": str(bob.pk), "text": "x"}, "Note")], user=alice
    )
    assert "would be hidden from its writer" in rejected[0][2]


def test_a_row_moving_out_of_view_is_a_delete_and_into_view_an_upsert():
    alice, bob = user_with(), user_with()
    note = Note.objects.create(owner=alice, text="passed on")
    with LiveSession(user=alice) as a, LiveSession(user=bob) as b:
        a_notes, b_notes = a.query("GetAllNotes", "Note"), b.query("GetAllNotes", "Note")
        a_count = a.report("CountAllNotes")
        Note.objects.filter(pk=note.pk).update(owner=bob)  # the server (or the admin) moves it
        a.pump()
        b.pump()
        assert a_notes.responses[-1]["deletes"] == [note.pk] and a_notes.items == {}
        assert [u["item"]["text"] for u in b_notes.responses[-1]["upserts"]] == ["passed on"]
        assert a_count.value == {"count": 0}


def test_users_who_see_the_same_rows_share_one_live_result():
    Vault.objects.create(name="gold")
    viewers = [user_with("view_vault") for _ in range(3)]
    keys = {resolve_query("GetAllVaults", "Vault", {}, u)[1].key for u in viewers}
    assert len(keys) == 1  # no visibility rule: everyone who may view shares
    alice, bob = user_with(), user_with()
    note_keys = {resolve_query("GetAllNotes", "Note", {}, u)[1].key for u in (alice, bob)}
    assert len(note_keys) == 2
    assert resolve_query("GetAllNotes", "Note", {}, alice)[1].key in note_keys  # stable


def test_user_queries_and_reports_receive_the_user(register_op):
    alice, bob = user_with(), user_with()
    Vault.objects.create(name=f"{alice.username}'s")
    Vault.objects.create(name=f"{bob.username}'s")

    def mine(*, user, prefix: str = "") -> object:
        return lambda item: item["name"].startswith(f"{prefix}{user.username}")

    def my_count(view, *, user) -> int:
        return sum(1 for v in view.items("Vault").values() if user.username in v["name"])

    register_op(
        "query", "MyVaults", mine, item="Vault", permission="myko_django.permissions.AllowAny"
    )
    register_op(
        "report",
        "MyVaultCount",
        my_count,
        depends=["Vault"],
        permission="myko_django.permissions.AllowAny",
    )
    alice_key = resolve_query("MyVaults", "Vault", {}, alice)[1].key
    assert alice_key != resolve_query("MyVaults", "Vault", {}, bob)[1].key
    with LiveSession(user=alice) as session:
        mine = session.query("MyVaults", "Vault").items.values()
        assert [v["name"] for v in mine] == [f"{alice.username}'s"]
        assert session.report("MyVaultCount").value == 1
    # A "user" sent on the wire is no parameter: it cannot make Alice Bob.
    assert resolve_query("MyVaults", "Vault", {"user": "bob"}, alice)[1].key == alice_key


@pytest.fixture
def register_op():
    from myko_django.items import operations

    added = []

    def do(kind, name, func, **extra):
        added.append((kind, name))
        return getattr(operations, kind)(name, **extra)(func)

    yield do
    for kind, name in added:
        operations.unregister(kind, name)
