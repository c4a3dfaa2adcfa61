"""Operations used by the tests (found by autodiscovery like any app's myko.py); open to
anonymous clients (AllowAny), as tests of other things than permissions need."""

import os
import threading
import time

from django.db import transaction

from myko_django import command, query, report, saga
from myko_django.permissions import AllowAny

from .models import Gadget

# Lets a test hold a command open inside its transaction.
gate = threading.Event()


@command("MakeGadgets", permission=AllowAny)
def make_gadgets(ctx, *, labels: list[str], fail_after: int | None = None) -> dict:
    for index, label in enumerate(labels):
        if fail_after is not None and index == fail_after:
            raise ValueError(f"failed after {index}")
        ctx.set("Gadget", {"id": f"g-{label}", "label": label})
    return {"made": len(labels)}


@command("SetGadgets", permission=AllowAny)
def set_gadgets(ctx, *, items: list[dict]) -> int:
    return ctx.set_many("Gadget", items)


@command("SetGadgetsThenWait", permission=AllowAny)
def set_gadgets_then_wait(ctx, *, items: list[dict], wait: float) -> int:
    """Holds its transaction open after writing, so another writer can race it."""
    count = ctx.set_many("Gadget", items)
    time.sleep(wait)
    return count


@command("PartlyRolledBack", permission=AllowAny)
def partly_rolled_back(ctx) -> None:
    """Writes in a savepoint the handler rolls back must leave no event."""
    ctx.set("Gadget", {"id": "g-kept", "label": "kept"})
    try:
        with transaction.atomic():
            ctx.set("Gadget", {"id": "g-dropped", "label": "dropped"})
            raise ValueError("changed my mind")
    except ValueError:
        pass
    ctx.set("Gadget", {"id": "g-after", "label": "after"})


@command("SlowCount", permission=AllowAny)
def slow_count(ctx, *, label: str, wait: float = 0.0) -> int:
    Gadget.objects.create(label=label)
    time.sleep(wait)
    return Gadget.objects.filter(label=label).count()


@command("Nested", permission=AllowAny)
def nested(ctx, *, label: str) -> dict:
    inner = ctx.run("MakeGadgets", labels=[label])
    ctx.delete("Gadget", "g-does-not-exist")
    return {"inner": inner, "got": ctx.get("Gadget", f"g-{label}")["label"]}


@command("WhoAmI", permission=AllowAny)
def who_am_i(ctx) -> str | None:
    """The username of the connection's user: None when anonymous."""
    user = ctx.user
    return user.username if user is not None and user.is_authenticated else None


@query("GetGadgetsByMinCount", item="Gadget", permission=AllowAny)
def gadgets_by_min_count(*, min_count: int):
    return {"count": {"kind": "range", "value": {"min": min_count}}}


@query("GetLongLabelGadgets", item=Gadget, permission=AllowAny)
def long_label_gadgets(*, length: int = 3):
    return lambda item: len(item["label"]) >= length


@report("GadgetLabels", depends=[Gadget], permission=AllowAny)
def gadget_labels(view, *, prefix: str = "") -> list[str]:
    return sorted(
        i["label"] for i in view.items("Gadget").values() if i["label"].startswith(prefix)
    )


@command("GetAccount", permission=AllowAny)
def get_account(ctx, *, id: str) -> dict | None:
    """An Account as a command sees it (tests/*/test_field_visibility.py)."""
    return ctx.get("Account", id)


@command("SetAccount", permission=AllowAny)
def set_account(ctx, *, item: dict) -> dict:
    """ctx.set of an Account: excluded keys are refused, as for clients."""
    return ctx.set("Account", item)


@command("TouchVault")
def touch_vault(ctx, *, id: str) -> str | None:
    """A user command with the default permission: any signed-in, active user."""
    row = ctx.get("Vault", id)
    return None if row is None else row["name"]


# ---- sagas (tests/db/test_sagas.py, tests/system/test_sagas.py) ---------------------------


@saga("TargetStats", on="SET", name="StatsMirror")
def stats_mirror(ctx, item, event) -> None:
    """Follows the writes of another saga (the demo's TargetStats): an Owner per Target
    whose name is its count of SETs."""
    ctx.set("Owner", {"id": f"stats-{item['id']}", "name": str(item["sets"])})


@saga(Gadget, on="SET", name="GadgetPoison", retries=2, backoff=0.05)
def gadget_poison(ctx, item, event) -> None:
    """Fails on a Gadget labelled "poison" until MYKO_TEST_CURE=1 (a fix deployed); records
    every other Gadget it sees as an Owner."""
    if item["label"] == "poison" and os.environ.get("MYKO_TEST_CURE") != "1":
        raise ValueError(f"poison gadget {item['id']}")
    ctx.set("Owner", {"id": f"seen-{item['id']}", "name": item["label"]})
