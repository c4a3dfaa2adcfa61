"""Real daphne worker processes for tests, serving tests.settings on the test database."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from django.db import connection

MAX_MESSAGE = str(16 * 1024 * 1024)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def database_url_for_children() -> str:
    """The URL of the database pytest-django created, for other processes."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("postgresql"):
        return (
            f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:"
            f"{db['PORT'] or 5432}/{db['NAME']}"
        )
    return f"sqlite:///{db['NAME']}"


class DaphneWorker:
    """One daphne process; `redis_url` joins it to other workers through channels-redis."""

    def __init__(
        self,
        log_dir: Path,
        *,
        redis_url: str | None = None,
        port: int | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.log = log_dir / f"daphne-{self.port}.log"
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url_for_children(),
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            **(extra_env or {}),
        }
        self.env.pop("REDIS_URL", None)
        if redis_url:
            self.env["REDIS_URL"] = redis_url
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/myko"

    def start(self, timeout: float = 20) -> DaphneWorker:
        self.launch()
        return self.wait_ready(timeout)

    def launch(self) -> None:
        log_file = open(self.log, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(self.port),
                "--websocket-max-message-size",
                MAX_MESSAGE,
                "--websocket-max-frame-size",
                MAX_MESSAGE,
                "project.asgi:application",
            ],
            env=self.env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        log_file.close()

    def wait_ready(self, timeout: float = 20) -> DaphneWorker:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/admin/login/", timeout=1)
                return self
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.proc.kill()
                    raise RuntimeError(f"daphne did not start:\n{self.output()}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""
