"""myko.js (myko_django/static/myko/myko.js) against a real daphne: Node's built-in test
runner runs tests/js/*.test.mjs with the server's URL in MYKO_URL. The JavaScript tests
say what they check (queries, windows, reports, commands, events, ping, state events,
reconnect with re-subscribe and re-send); this test starts the server and requires that
every one of them ran and passed."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from django.contrib.auth import get_user_model

from myko_django.auth import issue_token
from tests.support.npm import ROOT, ensure_node_modules

pytestmark = [pytest.mark.django_db(transaction=True)]

JS_TESTS = sorted((ROOT / "tests" / "js").glob("*.test.mjs"))


def run_node_tests(url: str, token: str, protocol: str) -> None:
    """Every tests/js test, speaking `protocol`; all must have run and passed."""
    # --test-timeout: a test that hangs fails with its name instead of holding the run.
    result = subprocess.run(
        ["node", "--test", "--test-timeout=30000", *[str(p.relative_to(ROOT)) for p in JS_TESTS]],
        cwd=ROOT,
        env={**os.environ, "MYKO_URL": url, "MYKO_TOKEN": token, "MYKO_PROTOCOL": protocol},
        capture_output=True,
        text=True,
        timeout=100,
    )
    output = f"{protocol}:\n{result.stdout}{result.stderr}"
    passed = re.search(r"^# pass (\d+)$", output, re.MULTILINE)
    failed = re.search(r"^# fail (\d+)$", output, re.MULTILINE)
    assert result.returncode == 0 and failed and failed.group(1) == "0", output
    declared = sum(len(re.findall(r"^test\(", p.read_text(), re.MULTILINE)) for p in JS_TESTS)
    assert passed and int(passed.group(1)) == declared, output


def test_myko_js_against_daphne_in_json_and_cbor(daphne_server):
    """One server for both runs: each JavaScript test makes ids of its own."""
    ensure_node_modules()
    assert JS_TESTS, "no tests/js/*.test.mjs"
    token = issue_token(get_user_model().objects.create_user("js-client"))
    for protocol in ("json", "cbor"):
        run_node_tests(daphne_server, token, protocol)
