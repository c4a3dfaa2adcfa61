"""tests.settings with one item type, Stamp, back on the library's default permission
(Django's model permissions), so tests of authentication can see access come and go."""

from tests.settings import *  # noqa: F403
from tests.settings import MYKO

MYKO = {
    **MYKO,
    "PERMISSIONS": {name: p for name, p in MYKO["PERMISSIONS"].items() if name != "Stamp"},
}
