"""The dashboard's static assets are package data (so the built wheel carries them)."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
STATIC = ROOT / "plugins" / "dashboard" / "static"


def test_every_static_asset_is_declared_as_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["celeriac.plugins.dashboard"]
    assets = sorted(path.relative_to(STATIC.parent).as_posix() for path in STATIC.rglob("*") if path.is_file())
    assert {"static/index.html", "static/app.js", "static/app.css"} <= set(assets)
    assert [a for a in assets if not any(fnmatch.fnmatch(a, p) for p in patterns)] == []
