"""Fixtures for the metrics tests: brokers (memory, Redis database 8, RabbitMQ) and a scraper."""

from __future__ import annotations

import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celeriac import Celeriac, Worker
from prometheus_client.parser import text_string_to_metric_families

REDIS_DB = 8


class Scrape:
    """One scrape of ``/metrics``: ``value(name, **labels)`` of a sample (None when absent)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [sample for family in text_string_to_metric_families(text) for sample in family.samples]

    def value(self, name: str, **labels: str) -> float | None:
        for sample in self.samples:
            if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items()):
                return float(sample.value)
        return None


def scrape_url(url: str) -> Scrape:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return Scrape(response.read().decode())


def scrape(worker: Worker) -> Scrape:
    from celeriac.plugins.prometheus import metrics_address

    address = metrics_address(worker)
    assert address is not None, "the worker serves no metrics"
    return scrape_url(f"http://127.0.0.1:{address[1]}/metrics")


def _redis_url() -> Iterator[str]:
    from celeriac.plugins.redis import _testing

    url = _testing.server_url(REDIS_DB)
    _testing.require_server(url)
    prefix = f"test-metrics-{uuid.uuid4().hex[:12]}:"
    yield f"{url}?global_keyprefix={prefix}"
    _testing.delete_keys(url, prefix)


@pytest.fixture(params=["memory", "redis", "amqp"])
def broker_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The broker of one test: a fresh memory:// name, Redis db 8 under a fresh key prefix, or
    RabbitMQ's test vhost (queues named by the test, deleted after)."""
    if request.param == "memory":
        yield f"memory://{uuid.uuid4().hex}"
    elif request.param == "redis":
        yield from _redis_url()
    else:
        from celeriac.plugins.amqp import _testing

        with _testing.broker_lock():
            _testing.require_server()
            yield _testing.server_url()


@pytest.fixture
def queue_name(broker_url: str) -> Iterator[str]:
    name = f"metrics-{uuid.uuid4().hex[:12]}"
    yield name
    if broker_url.startswith("amqp"):
        from celeriac.plugins.amqp import _testing

        _testing.delete_queues(broker_url, name)


@pytest.fixture
def make_app() -> Iterator[Any]:
    """``make_app(broker_url, **settings)`` -> an app serving metrics on a free port."""
    apps: list[Celeriac] = []

    def make(broker_url: str, **settings: Any) -> Celeriac:
        settings.setdefault("prometheus_port", 0)
        settings.setdefault("prometheus_address", "127.0.0.1")
        app = Celeriac(
            "metrics", broker_url=broker_url, result_store=f"memory://{uuid.uuid4().hex}", environ={}, **settings
        )
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()
