"""The demo page at `/` in a real browser: Debian's Chromium driven by Playwright (never a
downloaded browser build; bin/test installs chromium through apt when it is missing),
against real daphne processes on the test database (Postgres), with the Python client
(myko_django.client) on the other side of each change.

One browser for the module, a fresh context (cookies, tabs) and a fresh server per test. A
screenshot of the page is saved to artifacts/browser/ (gitignored): demo-page.png (anonymous,
30 Targets, after a Python client added one) and demo-page-signed-in.png (after an admin edit).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.template import engines
from playwright.sync_api import Browser, Page, expect, sync_playwright

from myko_django.client import connect
from myko_django.testing import DaphneServer, free_port
from project.demo.models import Target
from project.views import PAGE_SIZE

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "artifacts" / "browser"
ROWS = "#targets [data-myko-id]"
TIMEOUT = 10_000  # ms, for what the page shows
ASYNC_UNSAFE = "DJANGO_ALLOW_ASYNC_UNSAFE"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: bin/test installs it (apt-get install chromium)")
    # Playwright's sync API keeps an event loop on this thread, and Django then refuses ORM
    # calls as if they came from async code. These tests are synchronous: allow it here,
    # for this module only (never in the servers: see daphne()).
    saved = os.environ.get(ASYNC_UNSAFE)
    os.environ[ASYNC_UNSAFE] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM)
            yield browser
            browser.close()
    finally:
        if saved is None:
            os.environ.pop(ASYNC_UNSAFE, None)
        else:
            os.environ[ASYNC_UNSAFE] = saved


def daphne(tmp_path: Path, **kwargs: Any) -> DaphneServer:
    """A DaphneServer (not started) without this module's DJANGO_ALLOW_ASYNC_UNSAFE."""
    worker = DaphneServer(tmp_path, **kwargs)
    worker.env.pop(ASYNC_UNSAFE, None)
    return worker


@pytest.fixture
def server(transactional_db, tmp_path) -> Iterator[DaphneServer]:
    """A daphne on tests.settings (the demo project plus a test app) and the test database."""
    worker = daphne(tmp_path).start()
    yield worker
    worker.stop()
    print(worker.output()[-5000:])  # shown when the test failed
    connection.close()


def http_url(server: DaphneServer, path: str = "/") -> str:
    return f"http://127.0.0.1:{server.port}{path}"


def open_page(browser: Browser, server: DaphneServer, errors: list[str] | None = None) -> Page:
    """The demo page in a new context, once its list is live."""
    page = browser.new_context().new_page()
    page.set_default_timeout(TIMEOUT)
    if errors is not None:
        page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(http_url(server))
    expect(page.locator("#connection")).to_have_attribute("data-state", "open")
    expect(page.locator("#page")).not_to_have_text("…")
    return page


def row(page: Page, item_id: str):
    return page.locator(f'#targets [data-myko-id="{item_id}"]')


class PythonClient:
    """myko_django.client on an event loop of its own thread: Playwright's sync API owns
    this one's."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def open_client() -> Any:
            return await connect(url, "json")

        self.client = self.run(open_client())

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 15) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, func: Callable[[], Any]) -> Any:
        """`func()` on the client's loop (the client is not thread-safe)."""

        async def call() -> Any:
            return func()

        return self.run(call())

    def close(self) -> None:
        self.run(self.client.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def python_client(server) -> Iterator[PythonClient]:
    client = PythonClient(server.url)
    yield client
    client.close()


def make_targets(n: int) -> list[Target]:
    """n Targets in three categories; ids t00, t01, ... (the page sorts by id)."""
    colours = ["red", "green", "blue"]
    return Target.objects.bulk_create(
        Target(id=f"t{i:02d}", name=f"Target {i}", category=colours[i % 3]) for i in range(n)
    )


# ---- the page --------------------------------------------------------------------------------


def test_page_shows_the_targets_pages_filters_and_a_python_created_one_within_1s(
    browser, server, python_client
):
    make_targets(30)
    errors: list[str] = []
    page = open_page(browser, server, errors)
    # No filter: every category, the first page full, the live count of CountAllTargets.
    expect(page.locator(ROWS)).to_have_count(PAGE_SIZE)
    assert PAGE_SIZE >= 20
    expect(row(page, "t00")).to_contain_text("Target 0")
    assert page.locator(ROWS).evaluate_all("rows => rows.map(r => r.dataset.mykoId)") == [
        f"t{i:02d}" for i in range(PAGE_SIZE)
    ]
    categories = set(page.locator(f"{ROWS} .category").all_inner_texts())
    assert categories == {"red", "green", "blue"}
    suggested = page.locator("#categories option").evaluate_all("os => os.map(o => o.value)")
    assert suggested == ["blue", "green", "red"]  # the filter's suggestions
    expect(page.locator("#count")).to_have_text("30")
    expect(page.locator("#page")).to_have_text(f"1–{PAGE_SIZE} of 30")
    expect(page.locator("#who")).to_contain_text("Not signed in")
    expect(page.locator("#who")).to_contain_text("/admin/")

    # The paged window: next, previous.
    page.click("#next")
    expect(page.locator("#page")).to_have_text(f"{PAGE_SIZE + 1}–30 of 30")
    expect(page.locator(ROWS)).to_have_count(30 - PAGE_SIZE)
    expect(row(page, "t29")).to_contain_text("Target 29")
    page.click("#prev")
    expect(row(page, "t00")).to_be_visible()

    # A Target created by the Python client shows within a second of its commit.
    created = python_client.run(
        python_client.client.command("CreateTarget", name="from Python", category="red")
    )
    # A UUID sorts before "t..": it lands on the first page.
    started = time.monotonic()
    expect(row(page, created["id"])).to_contain_text("from Python", timeout=1000)
    shown_after = time.monotonic() - started
    expect(page.locator("#count")).to_have_text("31")
    print(f"shown {shown_after * 1000:.0f} ms after the command's response")

    # Filter by category: only red ones, the count of the whole result.
    page.fill("#filter", "red")
    page.press("#filter", "Enter")
    expect(page.locator("#page")).to_have_text("1–11 of 11")
    assert set(page.locator(f"{ROWS} .category").all_inner_texts()) == {"red"}
    page.fill("#filter", "")
    page.press("#filter", "Enter")
    expect(page.locator("#page")).to_have_text(f"1–{PAGE_SIZE} of 31")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / "demo-page.png", full_page=True)
    assert errors == []


def test_a_rename_typed_into_the_page_reaches_a_python_subscriber(browser, server, python_client):
    make_targets(3)
    client = python_client.client
    query = python_client.call(lambda: client.query("GetTargetsByIds", "Target", {"ids": ["t01"]}))
    assert python_client.run(query.ready())["t01"]["name"] == "Target 1"
    page = open_page(browser, server)

    target = row(page, "t01")
    target.locator("button.rename").click()
    target.locator("input.rename-input").fill("renamed in the browser")
    target.locator("input.rename-input").press("Enter")

    async def renamed() -> dict:
        async with asyncio.timeout(10):
            async for items in query:
                if items["t01"]["name"] == "renamed in the browser":
                    return items["t01"]

    assert python_client.run(renamed())["name"] == "renamed in the browser"
    expect(target.locator(".name")).to_have_text("renamed in the browser")
    assert Target.objects.get(pk="t01").name == "renamed in the browser"


def test_two_pages_see_each_others_adds_renames_and_deletes(browser, server):
    first = open_page(browser, server)
    second = open_page(browser, server)
    expect(first.locator("#page")).to_have_text("none")

    first.fill("#add input[name=name]", "added in tab one")
    first.fill("#add input[name=category]", "tabs")
    first.click("#add button[type=submit]")
    added = second.locator(ROWS, has_text="added in tab one")
    expect(added).to_have_count(1)
    expect(added.locator(".category")).to_have_text("tabs")
    item_id = added.get_attribute("data-myko-id")
    assert Target.objects.get(pk=item_id).name == "added in tab one"

    added.locator("button.rename").click()
    added.locator("input.rename-input").fill("renamed in tab two")
    added.locator("input.rename-input").press("Enter")
    expect(row(first, item_id).locator(".name")).to_have_text("renamed in tab two")

    row(first, item_id).locator("button.delete").click()
    expect(row(second, item_id)).to_have_count(0)
    expect(second.locator("#count")).to_have_text("0")
    assert not Target.objects.filter(pk=item_id).exists()


def test_an_edit_in_the_admin_form_appears_on_the_signed_in_page(browser, server):
    make_targets(2)
    get_user_model().objects.create_superuser("admin", "admin@example.com", "secret-pw")
    context = browser.new_context()
    admin = context.new_page()
    admin.set_default_timeout(TIMEOUT)
    admin.goto(http_url(server, "/admin/login/?next=/admin/"))
    admin.fill("#id_username", "admin")
    admin.fill("#id_password", "secret-pw")
    admin.click("input[type=submit]")
    expect(admin.locator("#user-tools")).to_contain_text("admin")

    # The demo page in the same browser session: it shows the user, its socket uses the session.
    page = context.new_page()
    page.set_default_timeout(TIMEOUT)
    page.goto(http_url(server))
    expect(page.locator("#username")).to_have_text("admin")
    expect(row(page, "t00")).to_contain_text("Target 0")
    # The socket's user is the session's: a Note (each user's own, IsAuthenticated) can be
    # made and read over it, which an anonymous socket is refused.
    owner = str(get_user_model().objects.get(username="admin").pk)
    note = page.evaluate(
        """async (ownerId) => {
            const created = await window.myko.command("CreateNote", { text: "mine", ownerId });
            const notes = window.myko.query("GetAllNotes", "Note");
            return (await notes.ready()).get(created.id).text;
        }""",
        owner,
    )
    assert note == "mine"

    admin.goto(http_url(server, "/admin/demo/target/t00/change/"))
    admin.fill("#id_name", "edited in the admin")
    admin.click("input[name=_save]")
    expect(admin.locator(".messagelist")).to_contain_text("was changed successfully")
    expect(row(page, "t00").locator(".name")).to_have_text("edited in the admin")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / "demo-page-signed-in.png", full_page=True)
    context.close()


def test_the_page_reconnects_after_a_restart_and_shows_what_changed_meanwhile(
    browser, transactional_db, tmp_path
):
    make_targets(3)
    worker = daphne(tmp_path, port=free_port()).start()
    try:
        page = open_page(browser, worker)
        expect(row(page, "t02")).to_contain_text("Target 2")
        worker.stop()  # SIGTERM: the worker drains and closes the socket (1012)
        expect(page.locator("#connection")).to_have_attribute("data-state", "reconnecting")
        Target.objects.filter(pk="t02").update(name="changed while away")
        Target.objects.create(id="t03", name="created while away", category="red")
        Target.objects.filter(pk="t00").delete()
        worker.start()
        expect(page.locator("#connection")).to_have_attribute("data-state", "open", timeout=20_000)
        expect(row(page, "t02").locator(".name")).to_have_text("changed while away")
        expect(row(page, "t03")).to_contain_text("created while away")
        expect(row(page, "t00")).to_have_count(0)
        expect(page.locator("#count")).to_have_text("3")
        # Still live after the reconnect.
        Target.objects.filter(pk="t01").update(name="after the restart")
        expect(row(page, "t01").locator(".name")).to_have_text("after the restart")
    finally:
        worker.stop()
        print(worker.output()[-5000:])
        connection.close()


# ---- static files under daphne, DEBUG on and off ----------------------------------------------


@pytest.mark.parametrize("debug", [True, False], ids=["debug", "production"])
def test_the_module_loads_under_daphne_with_debug_on_and_off(
    browser, transactional_db, tmp_path, debug
):
    """project.settings as bin/demo (DEBUG on: WhiteNoise finds the app's static files) and
    as the Dockerfile runs it (DEBUG off: from STATIC_ROOT after collectstatic)."""
    make_targets(2)
    env = {"DJANGO_DEBUG": "1" if debug else "0"}
    if not debug:
        env |= {
            "DJANGO_SECRET_KEY": "x" * 50,
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
            "DJANGO_SECURE_SSL_REDIRECT": "0",
            "DJANGO_SECURE_COOKIES": "0",
            "DJANGO_STATIC_ROOT": str(tmp_path / "static"),
        }
        subprocess.run(
            [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"],
            cwd=ROOT,
            env={**daphne(tmp_path).env, "DJANGO_SETTINGS_MODULE": "project.settings", **env},
            check=True,
            timeout=120,
        )
    worker = daphne(tmp_path, settings="project.settings", extra_env=env).start()
    try:
        errors: list[str] = []
        page = open_page(browser, worker, errors)
        expect(row(page, "t01")).to_contain_text("Target 1")
        served = page.request.get(http_url(worker, "/static/myko/myko.js"))
        assert served.status == 200
        assert served.headers["content-type"].startswith("text/javascript")
        module = ROOT / "myko_django" / "static" / "myko" / "myko.js"
        assert served.body() == module.read_bytes()
        assert errors == []
    finally:
        worker.stop()
        print(worker.output()[-5000:])
        connection.close()


# ---- the README's template ----------------------------------------------------------------------


def test_the_readme_template_works_as_written(browser, server):
    """The HTML block of the README's "In the browser", rendered by Django as it is."""
    make_targets(3)
    Target.objects.create(id="d1", name="a demo one", category="demo")
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## In the browser") :]
    html = section[section.index("```html\n") + 8 :]
    html = html[: html.index("```")]
    rendered = engines["django"].from_string(html).render({})

    page = browser.new_context().new_page()
    page.set_default_timeout(TIMEOUT)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(http_url(server, "/healthz"))  # the page's origin: the module's URL is relative
    page.set_content(rendered)
    expect(page.locator("#state")).to_have_text("open")
    expect(page.locator("#count")).to_have_text("4")
    expect(page.locator("#targets li")).to_have_count(1)
    expect(row_anywhere(page, "d1")).to_have_text("a demo one")
    Target.objects.create(id="d2", name="another", category="demo")
    expect(page.locator("#targets li")).to_have_count(2)
    assert errors == []


def row_anywhere(page: Page, item_id: str):
    return page.locator(f'[data-myko-id="{item_id}"]')


def test_myko_js_speaks_cbor_in_chromium_too(browser, server):
    """The page uses JSON; the same module in CBOR mode, in this browser, against this
    server: a live query, a command, and a BigInt that JSON could not carry."""
    make_targets(2)
    page = open_page(browser, server)
    result = page.evaluate(
        """async () => {
            const { connect } = await import("/static/myko/myko.js");
            const client = await connect(undefined, { protocol: "cbor" });
            const targets = client.query("GetAllTargets", "Target");
            await targets.ready();
            await client.command("RenameTarget", { id: "t01", name: "over CBOR" });
            await client.set("Gadget", { id: "g1", label: "big", extra: { n: 2n ** 63n } });
            const gadgets = client.query("GetGadgetsByIds", "Gadget", { ids: ["g1"] });
            while (!(await gadgets.ready()).has("g1")) await new Promise((r) => setTimeout(r, 20));
            const n = gadgets.items.get("g1").extra.n;
            client.close();
            return { name: targets.items.get("t01").name, n: String(n), bigint: typeof n };
        }"""
    )
    assert result == {"name": "over CBOR", "n": str(2**63), "bigint": "bigint"}
    expect(row(page, "t01").locator(".name")).to_have_text("over CBOR")
