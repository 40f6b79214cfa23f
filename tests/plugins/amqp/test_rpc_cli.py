"""``celeriac result`` cannot read rpc:// results (they go to the sender only): it says so in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from celeriac.cli import main

pytestmark = pytest.mark.timeout(30)


def test_result_with_rpc_store_is_one_clear_line(
    amqp_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "celeriac.toml").write_text(f'[celeriac]\nbroker_url = "{amqp_url}"\nresult_store = "rpc://"\n')
    with pytest.raises(SystemExit) as exited:
        main(["result", "0b7c2a4e-0000-4000-8000-000000000000"])
    err = capsys.readouterr().err
    assert exited.value.code == 1
    assert err.startswith("celeriac: result_store rpc:// sends each result only to the client that sent the task")
    assert len(err.strip().splitlines()) == 1
