"""The test-only npm packages of package.json (ws for tests/js, typescript for the typegen
test), installed by the test run itself from package-lock.json: `npm ci` when
node_modules does not hold exactly what the lock file pins."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _locked(lock: Path) -> dict[str, str]:
    """Version by package path; optional ones (another platform's builds) left out."""
    packages = json.loads(lock.read_text()).get("packages", {})
    return {
        name: info.get("version", "")
        for name, info in packages.items()
        if name and not info.get("optional")
    }


def ensure_node_modules() -> Path:
    """node_modules as package-lock.json pins it; returns its path. npm writes
    node_modules/.package-lock.json after an install: when that lists the same versions as
    package-lock.json, nothing is run."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        raise RuntimeError("these tests need Node.js 20 and npm on PATH")
    installed = ROOT / "node_modules" / ".package-lock.json"
    if not installed.exists() or _locked(installed) != _locked(ROOT / "package-lock.json"):
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
            cwd=ROOT,
            check=True,
            timeout=300,
        )
    return ROOT / "node_modules"
