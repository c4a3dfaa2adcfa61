"""The demo project served as the Dockerfile serves it (issue 10, points 2 and 7).

Static files: a real daphne on `project.settings` serves the admin's CSS with DEBUG on
(straight from the apps, as `bin/demo` runs it) and with DEBUG off (from a STATIC_ROOT that
`collectstatic` filled, behind the proxy headers the Dockerfile's daphne trusts). The
production settings refuse to start without `DJANGO_SECRET_KEY` or `DATABASE_URL`, and
`check --deploy` is clean with the production environment of docs/deploy.md.

The daphne command line and the health check are read from the Dockerfile itself, so what
is tested here is what the image runs (docker itself is not needed).
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import django
import pytest

from myko_django.testing import current_database_url, free_port
from project import healthcheck

ROOT = Path(__file__).resolve().parents[2]
BASE_CSS = Path(django.__file__).parent / "contrib/admin/static/admin/css/base.css"
CSS_URL = "/static/admin/css/base.css"
# What nginx in front sends (docs/deploy.md): daphne's --proxy-headers reads them.
VIA_PROXY = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}


def dockerfile_instruction(name: str) -> list[str]:
    """The exec-form argument list of the Dockerfile's CMD or HEALTHCHECK ... CMD."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line for line in text.splitlines() if line.startswith(name + " ")]
    assert len(lines) == 1, f"one {name} in the Dockerfile"
    return json.loads(re.search(r"CMD\s+(\[.*\])\s*$", lines[0]).group(1))


def project_env(**env: str) -> dict[str, str]:
    """This environment on project.settings, without what the test run adds (REDIS_URL,
    the DJANGO_* variables), plus `env`; this interpreter's scripts (daphne) first on PATH."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DJANGO_") and k not in ("REDIS_URL", "DATABASE_URL")
    }
    base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}"
    return {**base, "DJANGO_SETTINGS_MODULE": "project.settings", **env}


def production_env(**env: str) -> dict[str, str]:
    """The least docs/deploy.md says to set, with DEBUG off as the image sets it."""
    return project_env(
        **{
            "DJANGO_DEBUG": "0",
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
            "DATABASE_URL": "postgres://app@db-host:5432/app",
            "DJANGO_ALLOWED_HOSTS": "app.example.com",
            **env,
        }
    )


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


class Server:
    """A daphne process started from `argv` in the checkout; `get` speaks plain HTTP to it
    (redirects are answers, not followed)."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.port = int(env["PORT"])
        self.env = env
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.get("/")
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"daphne did not start:\n{log.read_text()}") from None
                time.sleep(0.2)

    def get(self, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            return (
                response.status,
                {k.lower(): v for k, v in response.getheaders()},
                (response.read()),
            )
        finally:
            conn.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        print(self.log.read_text()[-3000:])  # shown when a test failed


# ---- static files under daphne ------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_debug_on_serves_the_admin_css_straight_from_the_apps(tmp_path):
    """`bin/demo`: DEBUG on, nothing collected (STATIC_ROOT does not even exist)."""
    port = str(free_port())
    env = project_env(
        DATABASE_URL=current_database_url(),
        DJANGO_STATIC_ROOT=str(tmp_path / "never-collected"),
        PORT=port,
    )
    argv = ["daphne", "-b", "127.0.0.1", "-p", port, "project.asgi:application"]
    server = Server(argv, env, tmp_path / "daphne.log")
    try:
        status, headers, body = server.get(CSS_URL)
        assert status == 200, headers
        assert headers["content-type"].startswith("text/css")
        assert body == BASE_CSS.read_bytes()
        assert server.get("/static/admin/css/no-such.css")[0] == 404
    finally:
        server.stop()


@pytest.mark.django_db(transaction=True)
def test_debug_off_serves_the_collected_admin_css_as_the_dockerfile_runs_daphne(tmp_path):
    static_root = tmp_path / "static"
    port = str(free_port())
    env = production_env(
        DATABASE_URL=current_database_url(),
        DJANGO_STATIC_ROOT=str(static_root),
        PORT=port,
    )
    collected = manage(env, "collectstatic", "--noinput", "--verbosity", "0")
    assert collected.returncode == 0, collected.stderr
    assert (static_root / "admin/css/base.css").read_bytes() == BASE_CSS.read_bytes()

    server = Server(dockerfile_instruction("CMD"), env, tmp_path / "daphne.log")
    try:
        status, headers, body = server.get(CSS_URL, Host="app.example.com", **VIA_PROXY)
        assert status == 200, headers
        assert headers["content-type"].startswith("text/css")
        assert body == BASE_CSS.read_bytes()
        assert headers["strict-transport-security"].startswith("max-age=")
        # The gzip copy collectstatic made, to a client that takes it.
        status, headers, body = server.get(
            CSS_URL, Host="app.example.com", **{"Accept-Encoding": "gzip"}, **VIA_PROXY
        )
        assert status == 200 and headers["content-encoding"] == "gzip"
        assert gzip.decompress(body) == BASE_CSS.read_bytes()
        # The admin renders (its templates name the collected files).
        status, _, page = server.get("/admin/login/", Host="app.example.com", **VIA_PROXY)
        assert status == 200 and b"/static/admin/css/base.css" in page
        # Plain HTTP without the proxy's word is sent to HTTPS, and a page asked for by a
        # host not allowed is refused (static files are served whatever the host).
        status, headers, _ = server.get(CSS_URL, Host="app.example.com")
        assert status == 301
        assert headers["location"] == f"https://app.example.com{CSS_URL}"
        assert server.get("/admin/login/", Host="evil.example.net", **VIA_PROXY)[0] == 400
    finally:
        server.stop()


# ---- the Dockerfile's health check --------------------------------------------------------


def test_the_health_check_asks_with_a_host_the_deployment_allows():
    assert dockerfile_instruction("HEALTHCHECK") == ["python", "-m", "project.healthcheck"]
    assert healthcheck.probe_host("app.example.com,localhost") == "app.example.com"
    assert healthcheck.probe_host(" .example.com") == "example.com"
    assert healthcheck.probe_host("*") == "localhost"
    assert healthcheck.probe_host("") == "localhost"


@pytest.mark.django_db(transaction=True)
def test_the_health_check_passes_against_the_production_worker(tmp_path):
    """Plain HTTP to /healthz on the loopback: neither redirected to HTTPS nor refused for
    its Host, whatever DJANGO_ALLOWED_HOSTS names."""
    port = str(free_port())
    env = production_env(
        DATABASE_URL=current_database_url(),
        DJANGO_STATIC_ROOT=str(tmp_path / "static"),
        PORT=port,
    )
    server = Server(dockerfile_instruction("CMD"), env, tmp_path / "daphne.log")
    try:
        probe = subprocess.run(
            [sys.executable, "-m", "project.healthcheck"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert probe.returncode == 0, probe.stderr
        server.stop()
        probe = subprocess.run(
            [sys.executable, "-m", "project.healthcheck"], cwd=ROOT, env=env, timeout=30
        )
        assert probe.returncode == 1  # nobody answers
    finally:
        server.stop()


# ---- the image -----------------------------------------------------------------------------


def test_the_build_context_holds_what_the_dockerfile_copies_and_nothing_else():
    """docker cannot run here: check the Dockerfile against .dockerignore by reading both."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*"  # everything is out unless let in
    let_in = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = set()
    for line in dockerfile.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            copied.update(line.split()[1:-1])
    assert copied and copied <= let_in
    for never in ("**/__pycache__", "**/*.sqlite3"):
        assert never in ignore
    for path in copied:
        assert (ROOT / path).exists(), path


def test_the_dockerfile_runs_daphne_only_and_not_as_root():
    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd = " ".join(dockerfile_instruction("CMD"))
    assert "migrate" not in cmd and "--proxy-headers" in cmd
    assert re.search(r"^USER myko$", dockerfile, re.M)
    assert "collectstatic" in dockerfile
    # Runtime dependencies only: requirements.txt's test tools are a constraint, not installed.
    assert "-r requirements.txt" not in dockerfile and "--constraint" in dockerfile


# ---- production settings ------------------------------------------------------------------


def test_debug_off_refuses_to_start_without_a_secret_key():
    env = production_env()
    del env["DJANGO_SECRET_KEY"]
    out = manage(env, "check")
    assert out.returncode != 0
    assert "ImproperlyConfigured: DJANGO_SECRET_KEY is not set" in out.stderr
    # An empty one is no key either.
    out = manage({**env, "DJANGO_SECRET_KEY": ""}, "check")
    assert "DJANGO_SECRET_KEY is not set" in out.stderr


def test_debug_off_refuses_to_fall_back_to_sqlite():
    env = production_env()
    del env["DATABASE_URL"]
    out = manage(env, "check")
    assert out.returncode != 0
    assert "ImproperlyConfigured: DATABASE_URL is not set" in out.stderr


def test_debug_on_still_starts_with_nothing_set():
    out = manage(project_env(), "check")
    assert out.returncode == 0, out.stderr


def test_check_deploy_is_clean_with_the_production_environment():
    out = manage(production_env(), "check", "--deploy", "--fail-level", "INFO")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "System check identified no issues" in out.stdout


def test_check_deploy_names_what_a_development_environment_lacks():
    """The test above is not vacuous: DEBUG on, or HTTPS turned off, is reported."""
    out = manage(project_env(), "check", "--deploy", "--fail-level", "WARNING")
    assert out.returncode != 0
    for check in ("security.W004", "security.W008", "security.W009", "security.W018"):
        assert check in out.stderr
    out = manage(
        production_env(DJANGO_SECURE_SSL_REDIRECT="0", DJANGO_SECURE_COOKIES="0"),
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
    )
    assert out.returncode != 0
    for check in ("security.W008", "security.W012", "security.W016"):
        assert check in out.stderr


def test_a_yes_no_variable_must_say_yes_or_no():
    out = manage(production_env(DJANGO_SECURE_SSL_REDIRECT="maybe"), "check")
    assert out.returncode != 0
    assert "DJANGO_SECURE_SSL_REDIRECT must be 1 or 0, not 'maybe'" in out.stderr
