"""tests.settings with the operations settings a test chooses through the environment:
MYKO_TEST_DRAIN_TIMEOUT (seconds a SIGTERM waits for running commands) and
MYKO_TEST_MAX_MESSAGE_SIZE and MYKO_TEST_MAX_QUEUED_BYTES (bytes)."""

import os

from tests.settings import *  # noqa: F403
from tests.settings import MYKO

MYKO = {
    **MYKO,
    "DRAIN_TIMEOUT": float(os.environ.get("MYKO_TEST_DRAIN_TIMEOUT", "5")),
    "MAX_MESSAGE_SIZE": int(os.environ.get("MYKO_TEST_MAX_MESSAGE_SIZE", str(16 * 1024 * 1024))),
    "MAX_QUEUED_BYTES": int(os.environ.get("MYKO_TEST_MAX_QUEUED_BYTES", str(64 * 1024 * 1024))),
}
