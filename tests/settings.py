"""The demo project's settings plus a test app with every supported field kind."""

from project.settings import *  # noqa: F403
from project.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.testapp"]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Tests that must prove the channel layer delivers set a long poll interval.
import os  # noqa: E402

MYKO = {"POLL_INTERVAL": float(os.environ.get("MYKO_TEST_POLL_INTERVAL", "1.0"))}
