"""Review of the write path's checks (issue 9): a client that may not write an item type
learns nothing about its rows from the answers to its events; it gets "Permission denied"
before anything is read, validated or looked up for it."""

import pytest
from django.contrib.auth.models import AnonymousUser, User

from myko_django.log.writepath import apply_events
from project.demo.models import Note
from tests.testapp.models import Vault

pytestmark = pytest.mark.django_db(transaction=True)


def event(change: str, item: dict, item_type: str = "Vault") -> dict:
    return {"changeType": change, "itemType": item_type, "item": item, "tx": "e"}


def messages(events, user) -> list[str]:
    _, rejected = apply_events(events, user=user)
    assert [i for i, _, _ in rejected] == list(range(len(events))), rejected
    return [m for _, _, m in rejected]


def test_review_anonymous_del_of_a_missing_id_is_denied_like_one_of_an_existing_id():
    """Otherwise an anonymous client tells ids that exist (denied) from ids that do not
    (silently accepted) in any item type it may not touch."""
    vault = Vault.objects.create(name="gold")
    for who in (None, AnonymousUser()):
        found = messages(
            [event("DEL", {"id": vault.pk}), event("DEL", {"id": "no-such-vault"})], who
        )
        assert [m.split(":")[0] for m in found] == ["Permission denied"] * 2, found
        assert found[0] == found[1]  # the same answer: existence is not told
    assert Vault.objects.filter(pk=vault.pk).exists()


def test_review_anonymous_set_is_denied_before_the_item_is_validated():
    """A SET's values were validated (lengths, foreign keys, uniqueness) before the
    permission check, so an anonymous client got validation messages from a type it may
    not write: e.g. which users exist (a Note's ownerId is checked against the user table)."""
    alice = User.objects.create_user("alice")
    found = messages(
        [
            event("SET", {"id": "v1", "name": "x" * 100}),  # too long for Vault.name
            event("SET", {"id": "n1", "ownerId": "987654", "text": "t"}, "Note"),
            event("SET", {"id": "n2", "ownerId": str(alice.pk), "text": "t"}, "Note"),
        ],
        AnonymousUser(),
    )
    assert [m.split(":")[0] for m in found] == ["Permission denied"] * 3, found
    assert not Vault.objects.exists() and not Note.objects.exists()


def test_review_signed_in_user_cannot_probe_which_users_exist_through_a_hidden_row():
    """Row visibility: bob may add his own notes only. Writing a note for someone else is
    refused the same way whether that user exists or not (the foreign key is checked only
    after the row-level check)."""
    User.objects.create_user("alice")
    bob = User.objects.create_user("bob")
    alice = User.objects.get(username="alice")
    found = messages(
        [
            event("SET", {"id": "n1", "ownerId": str(alice.pk), "text": "t"}, "Note"),
            event("SET", {"id": "n2", "ownerId": "987654", "text": "t"}, "Note"),
        ],
        User.objects.get(pk=bob.pk),
    )
    assert [m.split(":")[0] for m in found] == ["Permission denied"] * 2, found
