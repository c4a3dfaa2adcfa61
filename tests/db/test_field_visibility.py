"""Field visibility (`fields` / `exclude`): fields kept off the wire are never encoded (items,
snapshots, the event log), cannot be written through the write path, keep their stored values
on SET, and are left alone by myko_rebuild and ignored by myko_resync."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import CommandError as ManagementCommandError
from django.core.management import call_command
from django.db import models, transaction
from django.test.utils import isolate_apps

from myko_django.checks import check_items
from myko_django.items import operations
from myko_django.items.errors import ItemError
from myko_django.items.registry import ItemType, Registry, explicit_registrations, registry
from myko_django.log import append
from myko_django.log.capture import write_transaction
from myko_django.log.commands import CommandContext, CommandError, run_command
from myko_django.log.read import read, read_snapshot
from myko_django.log.writepath import Change, apply, apply_events, apply_sets
from myko_django.models import Event, Item
from tests.testapp.models import Account, Badge

pytestmark = [pytest.mark.django_db(transaction=True)]

SECRET = "s3cret-token-value"
HIDDEN_KEYS = ("apiToken", "api_token", "avatar", "referrerId", "referrer", "referrer_id")


def make_account(pk: int = 1, name: str = "ann", **fields) -> Account:
    fields = {"api_token": SECRET, "avatar": "avatars/ann.png", **fields}
    return Account.objects.create(pk=pk, name=name, **fields)


def logged() -> list[tuple[str, str, dict]]:
    return list(Event.objects.order_by("position").values_list("item_type", "change_type", "item"))


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, "--noinput", stdout=out)
    return out.getvalue()


# ---- which fields travel ----------------------------------------------------------------


def test_only_exposed_fields_travel_and_the_id_always_does():
    account, badge = registry.get("Account"), registry.get("Badge")
    assert [c.wire for c in account.codecs] == ["id", "name"]
    assert account.excluded == ["api_token", "avatar", "referrer"]
    assert explicit_registrations()[Account]["exclude"] == ["api_token", "avatar", "referrer"]
    assert [c.wire for c in badge.codecs] == ["id", "label", "level"]  # myko_fields
    assert badge.excluded == ["code", "issued"]
    # The schema the engine and the filters get has the exposed fields only.
    assert set(account.schema.fields) == {"id", "name"}
    assert set(badge.schema.fields) == {"id", "label", "level"}


def test_register_arguments_replace_the_model_attributes():
    it = ItemType.for_model(Badge, exclude=["code"])
    assert [c.wire for c in it.codecs] == ["id", "label", "level", "issued"]
    it = ItemType.for_model(Badge, fields=["id", "code"])
    assert [c.wire for c in it.codecs] == ["id", "code"]


def test_encode_and_snapshot_leave_out_the_excluded_fields():
    account = make_account()
    account.referrer = account
    account.save()
    Badge.objects.create(id="b1", label="gold", code="X-1")
    assert registry.get("Account").encode(account) == {"id": "1", "name": "ann"}
    assert read_snapshot("Account").items == [{"id": "1", "name": "ann"}]
    assert read_snapshot("Badge").items == [{"id": "b1", "label": "gold", "level": 1}]


def test_events_in_the_log_and_published_carry_no_excluded_field(published):
    referrer = make_account(9, "ref", api_token="ref-secret")
    account = make_account(referrer=referrer)
    account.name = "bob"
    account.save()
    Account.objects.filter(pk=1).update(api_token="another-secret")
    referrer.delete()  # SET_NULL on the excluded foreign key
    account.refresh_from_db()
    assert account.referrer_id is None
    account.delete()
    events = [(t, c, i) for t, c, i in logged() if t == "Account"]
    assert sorted(c for _, c, _ in events) == ["DEL", "DEL", "SET", "SET", "SET", "SET", "SET"]
    assert all(set(item) == {"id", "name"} for _, _, item in events)
    text = json.dumps([logged(), [[e.item for e in batch] for batch in published]])
    assert SECRET not in text and "another-secret" not in text and "ref-secret" not in text
    assert not any(key in text for key in ('"apiToken"', '"avatar"', '"referrerId"'))


# ---- writes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, wire",
    [
        ("apiToken", "apiToken"),
        ("api_token", "apiToken"),
        ("avatar", "avatar"),
        ("referrerId", "referrerId"),
        ("referrer_id", "referrerId"),
    ],
)
def test_a_set_naming_an_excluded_field_is_refused_and_writes_nothing(key, wire):
    make_account()
    before = logged()
    for pk in ("1", "2"):  # an existing row and a new one
        with pytest.raises(ItemError, match=rf"^Account\.{wire} cannot be written$"):
            with write_transaction():
                apply(Change("SET", "Account", {"id": pk, "name": "x", key: "stolen"}))
    assert logged() == before
    assert list(Account.objects.values_list("pk", "name", "api_token")) == [(1, "ann", SECRET)]


def test_a_set_keeps_the_stored_excluded_values():
    referrer = make_account(9, "ref")
    make_account(referrer=referrer)
    with write_transaction():
        stored = apply(Change("SET", "Account", {"id": "1", "name": "renamed"}))
    assert stored == {"id": "1", "name": "renamed"}
    account = Account.objects.get(pk=1)
    assert (account.name, account.api_token, account.avatar.name, account.referrer_id) == (
        "renamed",
        SECRET,
        "avatars/ann.png",
        9,
    )


def test_a_set_of_a_new_row_gives_the_excluded_fields_their_defaults():
    with write_transaction():
        apply(Change("SET", "Account", {"id": "7", "name": "new"}))
    account = Account.objects.get()
    assert (account.pk, account.api_token, account.avatar.name, account.referrer_id) == (
        7,
        "tok-default",
        "",
        None,
    )


def test_clients_cannot_create_rows_whose_excluded_field_has_no_default():
    with pytest.raises(ItemError) as info:
        with write_transaction():
            apply(Change("SET", "Badge", {"id": "b1", "label": "gold"}))
    assert "Badge b1: new items cannot be created over myko: Badge.code is required" in str(
        info.value
    )
    assert Badge.objects.count() == 0
    # The server can; then a client SET keeps the code and the issue time.
    badge = Badge.objects.create(id="b1", label="gold", code="X-1")
    with write_transaction():
        apply(Change("SET", "Badge", {"id": "b1", "label": "silver", "level": 2}))
    again = Badge.objects.get()
    assert (again.label, again.level, again.code, again.issued) == (
        "silver",
        2,
        "X-1",
        badge.issued,
    )
    with pytest.raises(ItemError, match=r"^Badge\.code cannot be written$"):
        with write_transaction():
            apply(Change("SET", "Badge", {"id": "b1", "label": "x", "code": "Y"}))


def test_bulk_sets_follow_the_same_rule():
    make_account()
    with write_transaction():
        assert apply_sets("Account", [{"id": "1", "name": "a"}, {"id": "2", "name": "b"}]) == 2
    assert list(Account.objects.order_by("pk").values_list("name", "api_token")) == [
        ("a", SECRET),
        ("b", "tok-default"),
    ]
    with pytest.raises(ItemError, match=r"^Account\.apiToken cannot be written$"):
        with write_transaction():
            apply_sets("Account", [{"id": "1", "name": "c", "apiToken": "x"}])
    assert Account.objects.get(pk=1).name == "a"


def test_a_client_event_batch_rejects_only_the_event_with_an_excluded_field():
    make_account()
    events = [
        {"changeType": "SET", "itemType": "Account", "item": {"id": "1", "name": "ok"}},
        {"changeType": "SET", "itemType": "Account", "item": {"id": "1", "apiToken": "x"}},
    ]
    _, rejected = apply_events(events)
    assert [(i, message) for i, _, message in rejected] == [
        (1, "Account.apiToken cannot be written")
    ]
    assert list(Account.objects.values_list("name", "api_token")) == [("ok", SECRET)]


def test_ctx_set_in_a_command_refuses_excluded_fields_and_ctx_get_hides_them():
    make_account()
    with write_transaction():
        ctx = CommandContext("T", "t", None, "default")
        assert ctx.get("Account", "1") == {"id": "1", "name": "ann"}
        with pytest.raises(ItemError, match=r"^Account\.apiToken cannot be written$"):
            ctx.set("Account", {"id": "1", "name": "x", "apiToken": "y"})
        assert ctx.set("Account", {"id": "1", "name": "x"}) == {"id": "1", "name": "x"}
    assert Account.objects.get().api_token == SECRET
    with pytest.raises(CommandError, match=r"Account\.apiToken cannot be written"):
        run_command("SetAccount", {"item": {"id": "1", "apiToken": "y"}}, tx="c1")
    assert run_command("GetAccount", {"id": "1"}, tx="c2").response == {"id": "1", "name": "x"}


def test_a_filter_on_an_excluded_field_cannot_probe_its_value():
    """The engine's schema lacks the field, so a filter cannot tell a right guess from a
    wrong one: to a filter it is an unknown key, refused with one message for both."""
    make_account()

    def key(params):
        try:
            return operations.resolve_query("GetAccountsByQuery", "Account", params, None)[1].key
        except Exception as exc:  # noqa: BLE001 - whatever it is, it must not differ
            return str(exc)

    assert key({"apiToken": SECRET}) == key({"apiToken": "wrong"})
    assert key({"apiToken": SECRET}).startswith('GetAccountsByQuery: unknown field "apiToken"')


# ---- rebuild and resync -----------------------------------------------------------------


def test_rebuild_keeps_excluded_columns_and_fills_recreated_rows_with_defaults():
    make_account(1, "ann")
    make_account(2, "bob", api_token="bobs-secret")
    plain = models.QuerySet(Account)  # writes that bypass capture (no signals)
    plain.filter(pk=1).update(name="drifted", api_token="rotated")
    plain.filter(pk=2)._raw_delete("default")
    out = run("myko_rebuild", "--item-type", "Account")
    assert "Account: 1 inserted, 1 updated, 0 deleted" in out
    assert list(Account.objects.order_by("pk").values_list("pk", "name", "api_token")) == [
        (1, "ann", "rotated"),  # the name from the log; the secret as stored
        (2, "bob", "tok-default"),  # recreated: the log never had the secret
    ]
    assert "0 inserted, 0 updated, 0 deleted" in run("myko_rebuild", "--item-type", "Account")


def test_rebuild_ignores_excluded_fields_in_events_logged_before_the_exclusion():
    make_account()
    payload = {"id": "1", "name": "old", "apiToken": "logged-long-ago"}
    with transaction.atomic():
        append.append([append.Pending("SET", "Account", "1", payload)], tx="t", source_id=None)
    # Read back (gap repair, a store catching up) as it would be published now.
    assert list(read(0))[-1].item == {"id": "1", "name": "old"}
    run("myko_rebuild", "--item-type", "Account")
    assert list(Account.objects.values_list("name", "api_token")) == [("old", SECRET)]
    # resync replaces that payload with one without the secret
    assert "Account: 1 SET, 0 DEL" in run("myko_resync", "--item-type", "Account")
    assert logged()[-1] == ("Account", "SET", {"id": "1", "name": "old"})


def test_rebuild_refuses_to_recreate_a_row_whose_excluded_field_has_no_default():
    Badge.objects.create(id="b1", label="gold", code="X-1")
    models.QuerySet(Badge).filter(pk="b1")._raw_delete("default")
    with pytest.raises(ManagementCommandError, match="Badge b1: .*'code' is not on the wire"):
        run("myko_rebuild", "--item-type", "Badge")


def test_rebuild_stamps_recreated_rows_with_excluded_auto_now_add(monkeypatch):
    it = ItemType.for_model(Badge, exclude=["issued"])  # code travels, issued does not
    assert [f.name for f in it.kept] == ["issued"] and it.required_kept == []
    monkeypatch.setitem(registry.by_name, "Badge", it)
    payload = {"id": "b1", "label": "gold", "level": 3, "code": "X-1"}
    with transaction.atomic():
        append.append([append.Pending("SET", "Badge", "b1", payload)], tx="t", source_id=None)
    assert "Badge: 1 inserted" in run("myko_rebuild", "--item-type", "Badge")
    badge = Badge.objects.get()
    assert (badge.label, badge.level, badge.code) == ("gold", 3, "X-1")
    assert badge.issued is not None


def test_resync_compares_only_exposed_fields():
    make_account()
    plain = models.QuerySet(Account)
    plain.filter(pk=1).update(api_token="rotated", avatar="other.png")
    assert "Would append 0 SET, 0 DEL" in run("myko_resync", "--dry-run")
    plain.filter(pk=1).update(name="renamed")
    assert "Account: 1 SET, 0 DEL" in run("myko_resync", "--item-type", "Account")
    assert logged()[-1] == ("Account", "SET", {"id": "1", "name": "renamed"})


# ---- system checks ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_models():
    """Models of an app registry of their own: nothing else (deletes, checks) sees them."""
    with isolate_apps("tests.testapp"):

        class Secretive(models.Model):
            name = models.CharField(max_length=10)
            secret = models.CharField(max_length=10)
            upload = models.FileField()
            friends = models.ManyToManyField("self")

            class Meta:
                app_label = "testapp"

        class Picky(Item):
            myko_fields = ["name", "nope"]
            myko_exclude = ["name"]

            name = models.CharField(max_length=10)

            class Meta:
                app_label = "testapp"

        yield Secretive, Picky


def check_registry(monkeypatch, *item_types: ItemType) -> dict[str, list]:
    fake = Registry()
    for item_type in item_types:
        fake.add(item_type)
    monkeypatch.setattr("myko_django.checks.registry", fake)
    found: dict[str, list] = {}
    for message in check_items():
        found.setdefault(message.id, []).append(message)
    return found


def test_the_test_models_pass_the_checks():
    assert check_items() == []


def test_an_excluded_unsupported_field_is_no_longer_an_error(monkeypatch, fake_models):
    Secretive, _ = fake_models
    found = check_registry(monkeypatch, ItemType.for_model(Secretive))
    assert "upload (FileField)" in found["myko.E003"][0].msg
    assert "friends (many-to-many)" in found["myko.E003"][0].msg
    assert "myko_exclude" in found["myko.E003"][0].hint
    quiet = ItemType.for_model(Secretive, exclude=["upload", "friends"])
    assert [c.wire for c in quiet.codecs] == ["id", "name", "secret"]
    assert set(check_registry(monkeypatch, quiet)) == {"myko.E002"}  # the plain manager only


@pytest.mark.parametrize(
    "options, fragments",
    [
        ({"exclude": ["secret", "nope"]}, ["exclude names unknown field 'nope'", "fields: "]),
        ({"fields": ["name", "x", "y"]}, ["fields names unknown fields 'x', 'y'"]),
        ({"exclude": ["id", "upload", "friends"]}, ["primary key 'id', which always travels"]),
        ({"exclude": "upload"}, ["exclude must be a list of field names, not a string"]),
    ],
)
def test_mistakes_in_fields_and_exclude_are_myko_e012(monkeypatch, fake_models, options, fragments):
    Secretive, _ = fake_models
    item_type = ItemType.for_model(Secretive, **options)
    assert [c.wire for c in item_type.codecs][0] == "id"  # the id travels whatever happens
    errors = check_registry(monkeypatch, item_type)["myko.E012"]
    assert len(errors) == 1 and errors[0].obj is Secretive
    for fragment in fragments:
        assert fragment in errors[0].msg
    assert "Secretive" in errors[0].msg


def test_both_fields_and_exclude_is_an_error_and_both_apply(monkeypatch, fake_models):
    _, Picky = fake_models
    item_type = ItemType.for_model(Picky)
    assert [c.wire for c in item_type.codecs] == ["id"]  # fails closed: name hidden
    message = check_registry(monkeypatch, item_type)["myko.E012"][0].msg
    assert "sets both fields and exclude" in message and "'nope'" in message
