"""The README's "Testing your code" snippet, run as written.

The code block after the marker comment in README.md is executed as a module (line numbers
in tracebacks are README.md's), and every `test_*` function it defines is collected here
with its own marks, so the README and this test cannot drift apart.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
MARKER = "<!-- tests/db/test_readme.py runs the next code block as a test"


def readme_snippet(text: str) -> tuple[str, int]:
    """(the code of the block after the marker, the README line it starts on)."""
    head, marker, rest = text.partition(MARKER)
    assert marker, f"README.md lost the marker {MARKER!r}"
    block = re.match(r"[^\n]*\n```python\n(.*?)^```", rest, re.S | re.M)
    assert block, "README.md: the marker must be followed by a ```python block"
    first_line = head.count("\n") + 3  # the marker's line, the fence, then the code
    return block.group(1), first_line


def _load() -> dict:
    code, first_line = readme_snippet(README.read_text(encoding="utf-8"))
    namespace: dict = {"__name__": __name__}
    exec(compile("\n" * (first_line - 1) + code, str(README), "exec"), namespace)
    return namespace


_SNIPPET = _load()
_TESTS = {name: obj for name, obj in _SNIPPET.items() if name.startswith("test_")}
globals().update(_TESTS)  # pytest collects them from this module, marks and all


def test_the_snippet_defines_transactional_database_tests():
    assert _TESTS, "the README snippet defines no test_* function"
    for name, func in _TESTS.items():
        marks = [m for m in getattr(func, "pytestmark", []) if m.name == "django_db"]
        assert marks and marks[0].kwargs.get("transaction") is True, (
            f"README's {name} needs @pytest.mark.django_db(transaction=True): "
            "LiveSession sees events only when their transaction commits"
        )


def test_line_numbers_point_into_the_readme():
    code, first_line = readme_snippet(README.read_text(encoding="utf-8"))
    lines = README.read_text(encoding="utf-8").splitlines()
    assert lines[first_line - 1] == code.splitlines()[0]
