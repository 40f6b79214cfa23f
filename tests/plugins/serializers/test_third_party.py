"""A serializer from outside celeriac, registered through the config's ``plugins`` key."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import celeriac
import pytest
from celeriac import Celeriac, Envelope
from celeriac.testing import start_worker, wait_for

pytestmark = pytest.mark.timeout(60)


def config_file(tmp_path: Path, extra: str = "") -> Path:
    name = uuid.uuid4().hex
    path = tmp_path / "celeriac.toml"
    path.write_text(
        "[celeriac]\n"
        'plugins = ["celeriac_literal_serializer"]\n'
        f'broker_url = "memory://{name}"\n'
        f'result_store = "memory://{name}"\n'
        'serializer = "literal"\n'
        'result_serializer = "literal"\n'
        'accept_content = ["literal"]\n'
        'result_accept_content = ["literal"]\n' + extra
    )
    return path


def test_a_config_plugin_serializer_runs_tasks_end_to_end(tmp_path: Path, fixtures_on_path: Path) -> None:
    app = Celeriac.from_config(config_file(tmp_path, 'compression = "zlib"\ncompression_threshold = 0\n'), environ={})
    import celeriac_literal_serializer as plugin  # type: ignore[import-not-found]

    assert "literal" in app.serializers.names
    assert app.accept_content == frozenset({"application/x-python-literal"})

    @app.task(name="t.merge")
    def merge(left: dict[str, Any], right: dict[str, Any]) -> dict[str, Any]:
        return {**left, **right, "pair": (1, 2), "set": {3}}

    before = len(plugin.DECODED)
    with start_worker(app, pool="threads", concurrency=2):
        result = merge.delay({"a": 1}, {"b": b"x"}).get(timeout=10)
    assert result == {"a": 1, "b": b"x", "pair": (1, 2), "set": {3}}
    assert len(plugin.DECODED) - before >= 2  # the message on the worker, the result on the client
    app.close()


def test_the_literal_message_is_what_the_plugin_wrote(tmp_path: Path, fixtures_on_path: Path) -> None:
    app = Celeriac.from_config(config_file(tmp_path), environ={})
    envelope, _ = app.codec.encode(celeriac.TaskMessage(id="1", task="t", args=[(1, "a")]), "literal")
    assert envelope.content_type == "application/x-python-literal"
    assert envelope.body.startswith(b"[[(1, 'a')], {}, ")
    assert app.codec.decode(envelope).args == [(1, "a")]


def test_json_is_refused_by_a_worker_that_accepts_only_the_plugin(tmp_path: Path, fixtures_on_path: Path) -> None:
    app = Celeriac.from_config(config_file(tmp_path), environ={})
    rejected: list[str] = []
    app.on("task_rejected")(lambda exc: rejected.append(str(exc)))
    app.transport.publish(Envelope(b"[[1],{},null]", "application/json", headers={"task": "t", "id": "j"}), "default")
    with start_worker(app, pool="solo"):
        wait_for(lambda: rejected)
    assert rejected == ["content type 'application/json' is not accepted; add it to accept_content to allow it"]
    app.close()
