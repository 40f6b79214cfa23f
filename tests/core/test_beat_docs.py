"""The python examples of docs/beat.md run, in order, as one script."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

from celeriac import Celeriac

DOC = Path(__file__).parents[2] / "docs" / "beat.md"


def test_the_examples_in_docs_beat_md_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert len(blocks) >= 3
    name = uuid.uuid4().hex
    # each run gets its own memory broker and store, so nothing is shared with other tests
    source = "\n".join(blocks).replace('"memory://"', f'"memory://{name}"')
    namespace: dict[str, object] = {"__name__": "__main__"}
    exec(compile(source, str(DOC), "exec"), namespace)
    app = namespace["app"]
    assert isinstance(app, Celeriac)
    assert {"mornings", "hourly", "nightly", "standup"} <= set(app.periodic_tasks)
    app.close()
