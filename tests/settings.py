"""The demo project's settings plus a test app with every supported field kind."""

from project.settings import *  # noqa: F403
from project.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.testapp"]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Tests that must prove the channel layer delivers set a long poll interval.
import os  # noqa: E402

# The test app's item types are open to anonymous clients, like the demo's: tests of
# other things than permissions need no login (tests of permissions set their own).
MYKO = {
    **MYKO,  # noqa: F405
    "POLL_INTERVAL": float(os.environ.get("MYKO_TEST_POLL_INTERVAL", "1.0")),
    "PERMISSIONS": {
        **MYKO["PERMISSIONS"],  # noqa: F405
        **{
            name: "myko_django.permissions.AllowAny"
            for name in ("Gadget", "Owner", "Stamp", "Legacy", "Account", "Badge")
        },
    },
}

# Runs of the SQLite suite side by side in one checkout each need a test database file of
# their own (project/settings.py names one fixed file).
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3" and os.environ.get(  # noqa: F405
    "MYKO_TEST_SQLITE_NAME"
):
    DATABASES["default"]["TEST"] = {"NAME": os.environ["MYKO_TEST_SQLITE_NAME"]}  # noqa: F405

# pytest-django turns DEBUG off, so WhiteNoise would serve a collected STATIC_ROOT (and warn
# when there is none, as in a fresh checkout): under tests it finds files in the apps, as
# with DEBUG on. tests/system/test_static_and_settings.py tests both modes on project.settings.
WHITENOISE_AUTOREFRESH = True
WHITENOISE_USE_FINDERS = True
