"""Check that a built wheel contains every package listed in pyproject.toml, py.typed and the
entry points. Usage: python scripts/check_wheel.py dist/celeriac-*.whl"""

from __future__ import annotations

import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(wheel: str) -> int:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = config["tool"]["setuptools"]["packages"]
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [p for p in packages if f"{p.replace('.', '/')}/__init__.py" not in names]
    if "celeriac/py.typed" not in names:
        missing.append("celeriac/py.typed")
    # package data: every file the package-data patterns cover in the source tree is in the wheel
    for package, patterns in config["tool"]["setuptools"].get("package-data", {}).items():
        folder = ROOT / (
            "core" if package == "celeriac" else package.replace("celeriac.plugins", "plugins", 1).replace(".", "/")
        )
        for pattern in patterns:
            for path in folder.glob(pattern):
                if path.is_file():
                    member = package.replace(".", "/") + "/" + path.relative_to(folder).as_posix()
                    if member not in names:
                        missing.append(member)
    entry_points = next((n for n in names if n.endswith("entry_points.txt")), None)
    if entry_points is None:
        missing.append("entry_points.txt")
    else:
        text = zipfile.ZipFile(wheel).read(entry_points).decode()
        missing += [f"entry point {name}" for name in config["project"]["entry-points"]["celeriac"] if name not in text]
    if missing:
        sys.stderr.write(f"wheel {wheel} is missing: {', '.join(missing)}\n")
        return 1
    sys.stdout.write(f"wheel {Path(wheel).name}: {len(packages)} packages, py.typed, package data, entry points: ok\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
