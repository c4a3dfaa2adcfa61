"""Review of field visibility (issue 9): a field kept off the wire must not reach a client in
an error message either. The database's own messages quote the row (Postgres: "DETAIL:
Failing row contains (...)", "Key (...)=(...)"), hidden columns included, and were passed on
to the client as they were.

Account (tests/testapp) keeps `api_token` off the wire. A CHECK constraint the model does not
declare stands in for what full_clean does not check before the database: a CheckConstraint
naming an excluded field (full_clean skips those), a trigger, a deferred constraint."""

import pytest
from django.db import connection

from myko_django.log.commands import CommandError, run_command
from myko_django.log.writepath import apply_events
from tests.testapp.models import Account

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif("connection.vendor != 'postgresql'"),
]

SECRET = "s3cret-token-value"


@pytest.fixture
def no_forbidden_names():
    table = Account._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"ALTER TABLE {table} ADD CONSTRAINT review_no_forbidden CHECK (name <> 'forbidden')"
        )
    yield
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} DROP CONSTRAINT review_no_forbidden")


def test_review_a_database_error_does_not_quote_hidden_fields_to_an_event(no_forbidden_names):
    Account.objects.create(pk=1, name="ann", api_token=SECRET)
    event = {"changeType": "SET", "itemType": "Account", "item": {"id": "1", "name": "forbidden"}}
    _, rejected = apply_events([event], user=None)
    assert len(rejected) == 1
    message = rejected[0][2]
    assert "review_no_forbidden" in message  # what was violated is still told
    assert SECRET not in message, message
    assert Account.objects.get(pk=1).name == "ann"


def test_review_a_database_error_does_not_quote_hidden_fields_to_a_command(no_forbidden_names):
    Account.objects.create(pk=1, name="ann", api_token=SECRET)
    with pytest.raises(CommandError) as info:
        run_command("SetAccount", {"item": {"id": "1", "name": "forbidden"}}, tx="t", user=None)
    assert SECRET not in str(info.value), str(info.value)
