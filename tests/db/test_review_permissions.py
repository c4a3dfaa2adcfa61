"""Review of operation permissions (issue 9): every user report is checked, also one that
depends on no item type."""

import pytest
from django.contrib.auth.models import AnonymousUser, User

from myko_django.items import operations
from myko_django.items.operations import resolve_report
from myko_django.items.permissions import PermissionDenied
from myko_django.permissions import IsStaff

pytestmark = pytest.mark.django_db(transaction=True)


def settings_of(view) -> dict:
    return {"feature": "on"}


@pytest.fixture
def reports():
    operations.report("StaffSettings", depends=[], permission=IsStaff)(settings_of)
    operations.report("PlainSettings", depends=[])(settings_of)
    yield
    operations.unregister("report", "StaffSettings")
    operations.unregister("report", "PlainSettings")


def test_review_a_report_without_depends_still_checks_its_permission(reports):
    member = User.objects.create_user("member")  # signed in, not staff
    for who in (AnonymousUser(), member):
        with pytest.raises(PermissionDenied):
            resolve_report("StaffSettings", {}, who)
    staff = User.objects.create_user("boss", is_staff=True)
    assert resolve_report("StaffSettings", {}, staff).kind == "custom"


def test_review_a_report_without_depends_is_closed_to_anonymous_by_default(reports):
    """Nothing is open unless a setting opens it: the default permission applies (a user
    report then needs a signed-in user, like a user command)."""
    with pytest.raises(PermissionDenied):
        resolve_report("PlainSettings", {}, AnonymousUser())
    assert resolve_report("PlainSettings", {}, User.objects.create_user("m")).kind == "custom"


def test_review_a_nested_command_checks_its_own_permission():
    """`ctx.run` of an operation the user may not run (a derived delete, needing the
    `delete` permission; a staff-only command) is refused as it would be from the wire:
    otherwise any command open to signed-in users that runs another by name escalates."""
    from myko_django.log.commands import CommandError, run_command
    from tests.testapp.models import Vault

    def purge(ctx, *, ids: list[str]) -> dict:
        return ctx.run("DeleteVaults", ids=ids)

    def wipe(ctx) -> str:
        return "wiped"

    def ask_wipe(ctx) -> str:
        return ctx.run("StaffWipe")

    operations.command("Purge")(purge)
    operations.command("StaffWipe", permission=IsStaff)(wipe)
    operations.command("AskWipe")(ask_wipe)
    try:
        vault = Vault.objects.create(name="gold")
        member = User.objects.create_user("member")  # signed in, no model permission
        with pytest.raises(CommandError, match="^Permission denied"):
            run_command("Purge", {"ids": [vault.pk]}, tx="t1", user=member)
        assert Vault.objects.filter(pk=vault.pk).exists()
        with pytest.raises(CommandError, match="^Permission denied"):
            run_command("AskWipe", {}, tx="t2", user=member)
    finally:
        for name in ("Purge", "StaffWipe", "AskWipe"):
            operations.unregister("command", name)
