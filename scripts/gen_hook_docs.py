"""Write docs/hooks.md from celeriac/hookspecs.py (a test fails when the file is stale).

Run: python scripts/gen_hook_docs.py
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "hooks.md"


def render() -> str:
    from celeriac import hookspecs

    lines = [
        "# Hook reference",
        "",
        "Generated from `celeriac/hookspecs.py` by `python scripts/gen_hook_docs.py`; do not edit by hand.",
        "Implement any of these with `@celeriac.hookimpl` on a function of the same name, taking only",
        "the arguments you need.",
        "",
    ]
    specs = inspect.getmembers(hookspecs, inspect.isfunction)
    for name, function in sorted(specs, key=lambda item: item[1].__code__.co_firstlineno):
        marker = getattr(function, "celeriac_spec", None)
        if marker is None:
            continue
        parameters = ", ".join(inspect.signature(function).parameters)
        firstresult = " *(firstresult: the first non-None answer wins)*" if marker.get("firstresult") else ""
        lines += [f"## `{name}({parameters})`{firstresult}", "", inspect.cleandoc(function.__doc__ or ""), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render())
    sys.stdout.write(f"wrote {DOC}\n")
