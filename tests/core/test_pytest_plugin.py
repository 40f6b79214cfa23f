"""The pytest plugin's fixtures, as a user's test suite sees them (loaded through pytest11)."""

from __future__ import annotations

from typing import Any

import pytest
from celeriac import Celeriac
from celeriac.worker import Worker


def test_celeriac_app_is_fresh_and_isolated(celeriac_app: Celeriac) -> None:
    assert celeriac_app.conf.broker_url.startswith("memory://")
    assert celeriac_app.conf.broker_url != "memory://"
    assert "fixture.mul" not in celeriac_app.tasks


def test_celeriac_worker_runs_tasks(celeriac_app: Celeriac, celeriac_worker: Worker) -> None:
    @celeriac_app.task(name="fixture.mul")
    def mul(x: int, y: int) -> int:
        return x * y

    assert celeriac_worker.app is celeriac_app
    assert celeriac_app.conf.task_always_eager is False
    result = mul.delay(6, 7)
    assert result.get(timeout=10) == 42
    assert result.successful()


class TestOverride:
    @pytest.fixture
    def celeriac_config(self) -> dict[str, Any]:
        return {
            "broker_url": "memory://overridden-in-test",
            "result_store": "memory://overridden-in-test",
            "task_always_eager": True,
        }

    def test_celeriac_config_can_be_overridden(self, celeriac_app: Celeriac) -> None:
        @celeriac_app.task
        def echo(x: int) -> int:
            return x

        assert celeriac_app.conf.broker_url == "memory://overridden-in-test"
        assert echo.delay(3).get() == 3
        assert celeriac_app.transport.queue_length("default") == 0
