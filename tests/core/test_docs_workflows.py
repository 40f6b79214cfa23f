"""Every ``python`` block of docs/workflows.md runs, in order, as one script."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest

PAGE = Path(__file__).resolve().parents[2] / "docs" / "workflows.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


@pytest.mark.timeout(120)
def test_the_examples_in_docs_workflows_run() -> None:
    blocks = BLOCK.findall(PAGE.read_text())
    assert len(blocks) >= 10
    name = uuid.uuid4().hex  # a private broker and store, not the process-wide default
    namespace: dict[str, Any] = {"__name__": "__main__"}
    try:
        for number, block in enumerate(blocks, 1):
            code = compile(block.replace('"memory://"', f'"memory://{name}"'), f"{PAGE.name} block {number}", "exec")
            exec(code, namespace)
    finally:
        worker = namespace.get("worker")
        if worker is not None:
            worker.stop()
        app = namespace.get("app")
        if app is not None:
            app.close()
