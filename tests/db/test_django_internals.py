"""Pins the Django behaviour behind each helper of `myko_django.log.django_internals`.

Those helpers are the only places the package leans on Django internals. Each test here
states the behaviour a helper relies on, so a Django upgrade that changes it fails here
first, with the helper's name in the test's name, instead of silently losing events.
"""

from __future__ import annotations

import inspect

import pytest
from django.db import NotSupportedError, connection, models, transaction
from django.db.models.deletion import Collector
from django.test.utils import isolate_apps

from myko_django.log import django_internals as internals
from myko_django.log.managers import ItemQuerySet
from project.demo.models import Scene, Target
from tests.testapp.models import Gadget, Note, Owner, fallback_owner

pytestmark = [pytest.mark.core]
USING = "default"
ran: list[str] = []


def _callback(name: str):
    def callback() -> None:
        ran.append(name)

    callback.__name__ = name
    return callback


# ---- on_commit_callbacks ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_on_commit_callbacks_are_the_registered_callables_less_those_rolled_back():
    """append_deferred finds the events of a transaction in its on_commit callbacks: the
    very objects registered, oldest first, and none registered in a savepoint that rolled
    back (robust ones included); and they run at commit in that order."""
    ran.clear()
    first, dropped, kept, robust, last = (
        _callback(n) for n in ("first", "dropped", "kept", "robust", "last")
    )
    with transaction.atomic():
        assert internals.on_commit_callbacks(USING) == []
        transaction.on_commit(first)
        try:
            with transaction.atomic():
                transaction.on_commit(dropped)
                raise RuntimeError("roll this savepoint back")
        except RuntimeError:
            pass
        with transaction.atomic():
            transaction.on_commit(kept)
            transaction.on_commit(robust, robust=True)
        transaction.on_commit(last)
        callbacks = internals.on_commit_callbacks(USING)
        assert [c.__name__ for c in callbacks] == ["first", "kept", "robust", "last"]
        assert all(c is f for c, f in zip(callbacks, (first, kept, robust, last), strict=True))
        assert ran == []
    assert ran == ["first", "kept", "robust", "last"]
    assert internals.on_commit_callbacks(USING) == []


# ---- last_on_commit_here ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_last_on_commit_here_only_under_the_same_savepoints():
    """Events appended later join the newest publication only when one rollback would drop
    both: Django records each callback with the savepoints open when it was registered."""
    outer, inner = _callback("outer"), _callback("inner")
    with transaction.atomic():
        assert internals.last_on_commit_here(USING) is None
        transaction.on_commit(outer)
        assert internals.last_on_commit_here(USING) is outer
        try:
            with transaction.atomic():
                # Registered outside this savepoint: a rollback here would not drop it.
                assert internals.last_on_commit_here(USING) is None
                transaction.on_commit(inner)
                assert internals.last_on_commit_here(USING) is inner
                with transaction.atomic():
                    assert internals.last_on_commit_here(USING) is None
                raise RuntimeError("roll back the savepoint and inner with it")
        except RuntimeError:
            pass
        assert internals.last_on_commit_here(USING) is outer


# ---- can_lock_rows ---------------------------------------------------------------------


@pytest.mark.django_db
def test_can_lock_rows_is_whether_select_for_update_locks():
    """Where the backend has no SELECT ... FOR UPDATE (SQLite), Django silently drops it;
    the write path uses the feature flag to know whether rows are locked."""
    owner = Owner.objects.create(name="lock me")
    with transaction.atomic():
        query = Owner.objects.filter(pk=owner.pk).select_for_update()
        sql = str(query.query)
        assert internals.can_lock_rows(USING) is ("FOR UPDATE" in sql)
        assert list(query) == [owner]
    assert internals.can_lock_rows(USING) is (connection.vendor != "sqlite")


# ---- use_as_base_manager ---------------------------------------------------------------


class _TrackedQuerySet(models.QuerySet):
    pass


_TrackedManager = models.Manager.from_queryset(_TrackedQuerySet)


@isolate_apps("tests.testapp")
def test_use_as_base_manager_changes_the_base_manager_after_class_creation():
    """`Model._base_manager` is a cached property of the model's options, read from
    `base_manager_name`; related-object access and on_delete updates go through it."""

    class Shelf(models.Model):
        tracked = _TrackedManager()

        class Meta:
            app_label = "testapp"

    class Book(models.Model):
        shelf = models.ForeignKey(Shelf, null=True, on_delete=models.SET_NULL)

        class Meta:
            app_label = "testapp"

    # Django's default base manager is a plain Manager, not the model's default manager.
    assert type(Shelf._base_manager) is models.Manager
    assert type(Book.shelf.get_queryset()) is models.QuerySet

    internals.use_as_base_manager(Shelf, "tracked")

    assert Shelf._meta.base_manager_name == "tracked"
    assert Shelf._base_manager is Shelf._meta.managers_map["tracked"]
    assert isinstance(Shelf._base_manager.get_queryset(), _TrackedQuerySet)
    # Forward related access (book.shelf) reads through the base manager.
    assert isinstance(Book.shelf.get_queryset(), _TrackedQuerySet)
    # So do the deletion collector's related-object queries.
    assert isinstance(Collector(USING).related_objects(Shelf, [], []), _TrackedQuerySet)


# ---- updates_fetched_rows --------------------------------------------------------------


@pytest.mark.parametrize(
    ("on_delete", "fetched"),
    [
        (models.SET_DEFAULT, True),
        (models.SET(fallback_owner), True),
        (models.SET_NULL, False),
        (models.SET(None), False),
        (models.SET(7), False),
        (models.CASCADE, False),
        (models.PROTECT, False),
        (models.RESTRICT, False),
        (models.DO_NOTHING, False),
    ],
    ids=[
        "SET_DEFAULT",
        "SET(callable)",
        "SET_NULL",
        "SET(None)",
        "SET(value)",
        "CASCADE",
        "PROTECT",
        "RESTRICT",
        "DO_NOTHING",
    ],
)
def test_updates_fetched_rows(on_delete, fetched):
    assert internals.updates_fetched_rows(on_delete) is fetched


def _field_updates(instance: models.Model) -> dict[str, list]:
    """What Django's deletion collector would update when `instance` is deleted, by field."""
    collector = Collector(USING, origin=instance)
    collector.collect([instance])
    return {field.name: entries for (field, _), entries in collector.field_updates.items()}


def _lazy(entries: list) -> bool:
    """Collector.delete() updates these with QuerySet.update (not yet fetched querysets)."""
    return all(isinstance(e, models.QuerySet) and e._result_cache is None for e in entries)


@pytest.mark.parametrize("on_delete", [models.SET_NULL, models.SET(None)], ids=["SET_NULL", "SET"])
@isolate_apps("tests.testapp")
def test_updates_fetched_rows_false_is_an_update_through_the_base_manager(on_delete):
    """SET_NULL and SET(value) are applied with the related model's base-manager QuerySet,
    not yet evaluated, which Collector.delete() updates with `.update()`: ItemQuerySet's
    update captures them."""

    class Shelf(models.Model):
        class Meta:
            app_label = "testapp"

    class Book(models.Model):
        shelf = models.ForeignKey(Shelf, null=True, on_delete=on_delete)
        tracked = _TrackedManager()

        class Meta:
            app_label = "testapp"
            base_manager_name = "tracked"

    updates = _field_updates(Shelf(pk=1))  # lazy: no query is run
    assert list(updates) == ["shelf"]
    assert _lazy(updates["shelf"])
    assert all(isinstance(e, _TrackedQuerySet) for e in updates["shelf"])


@pytest.fixture
def item_updates(monkeypatch):
    """(model, kwargs) of every ItemQuerySet.update call, which is what captures them."""
    calls: list[tuple[type[models.Model], dict]] = []
    update = ItemQuerySet.update

    def spy(self, **kwargs):
        calls.append((self.model, kwargs))
        return update(self, **kwargs)

    monkeypatch.setattr(ItemQuerySet, "update", spy)
    return calls


@pytest.mark.django_db
def test_updates_fetched_rows_true_is_an_update_past_queryset_update(item_updates):
    """SET_DEFAULT and SET(callable) make the collector fetch the rows and UPDATE them with
    a raw UpdateQuery: no QuerySet.update runs, so capture must re-read those rows."""
    owner = Owner.objects.create(name="o")
    gadget = Gadget.objects.create(label="g", keeper=owner, backup=owner)

    updates = _field_updates(owner)
    assert sorted(updates) == ["backup", "keeper"]
    assert not any(_lazy([e]) for entries in updates.values() for e in entries)

    owner.delete()
    gadget.refresh_from_db()
    assert (gadget.keeper, gadget.backup) == (None, None)
    assert [model for model, _ in item_updates] == []


@pytest.mark.django_db
def test_updates_fetched_rows_false_reaches_the_item_queryset_update(item_updates):
    """And SET_NULL, end to end: deleting the parent calls the item model's
    ItemQuerySet.update (its base manager) with the new value."""
    scene = Scene.objects.create(name="s")
    target = Target.objects.create(name="t", scene=scene)
    assert not internals.updates_fetched_rows(
        Target._meta.get_field("scene").remote_field.on_delete
    )
    scene.delete()
    target.refresh_from_db()
    assert target.scene is None
    assert item_updates == [(Target, {"scene": None})]


@pytest.mark.django_db
def test_updates_fetched_rows_cascade_updates_nothing():
    """CASCADE deletes the rows (their DELs are captured by post_delete), no update."""
    owner = Owner.objects.create(name="o")
    gadget = Gadget.objects.create(label="g", owner=owner)
    collector = Collector(USING, origin=owner)
    collector.collect([owner])
    assert "owner" not in {field.name for field, _ in collector.field_updates}
    assert gadget in collector.data[Gadget]


# ---- RefuseRawDelete -------------------------------------------------------------------


def test_refuse_raw_delete_overrides_the_querysets_raw_delete():
    """Django's fast delete calls `QuerySet._raw_delete(using)`; ItemQuerySet overrides it."""
    assert list(inspect.signature(models.QuerySet._raw_delete).parameters) == ["self", "using"]
    assert ItemQuerySet._raw_delete is internals.RefuseRawDelete._raw_delete
    assert models.QuerySet._raw_delete is not internals.RefuseRawDelete._raw_delete


@pytest.mark.django_db
def test_a_fast_delete_calls_raw_delete(monkeypatch):
    """A queryset delete with nothing to cascade and no delete signal receivers is a fast
    delete, and so is a cascade to such a model: both go through `_raw_delete`."""
    raw_deletes: list[tuple[type[models.Model], str]] = []
    raw_delete = models.QuerySet._raw_delete

    def spy(self, using):
        raw_deletes.append((self.model, using))
        return raw_delete(self, using)

    monkeypatch.setattr(models.QuerySet, "_raw_delete", spy)
    gadget = Gadget.objects.create(label="g")
    Note.objects.create(gadget=gadget, text="a")
    Note.objects.create(gadget=gadget, text="b")

    Note.objects.filter(text="a").delete()
    assert raw_deletes == [(Note, USING)]
    gadget.delete()  # cascades to its other note
    assert raw_deletes == [(Note, USING), (Note, USING)]
    assert not Note.objects.exists()


@pytest.mark.django_db
def test_a_fast_delete_of_an_item_queryset_is_refused():
    """Were an item queryset ever fast-deleted (say, with its signal receivers gone), the
    rows would vanish without events: the collector's `_raw_delete` call is refused."""
    gadget = Gadget.objects.create(label="g")
    collector = Collector(USING)
    collector.fast_deletes.append(Gadget.objects.filter(pk=gadget.pk))
    with pytest.raises(NotSupportedError, match="Gadget: a raw delete would bypass"):
        with transaction.atomic():
            collector.delete()
    with pytest.raises(NotSupportedError):
        Gadget.objects.all()._raw_delete(USING)
    assert Gadget.objects.filter(pk=gadget.pk).exists()
