"""Helpers for tests that need a real RabbitMQ (celeriac's own and the conformance entries).

The server is ``$CELERIAC_TEST_AMQP`` (default ``amqp://guest:guest@127.0.0.1:5672``). Tests run
in a virtual host of their own, ``celeriac-test-<uuid>``, created with ``rabbitmqctl`` on first
use in a process and deleted when the process exits -- so queues, exchanges and the delay
levels they declare never outlive the test run. Without ``rabbitmqctl`` they use ``/`` and
unique queue names. When the server is not running, tests skip with a message saying how to
start it -- except under ``CI=true``, where they fail, so a CI machine without RabbitMQ cannot
pass by skipping.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import amqp

__all__ = ["broker_lock", "delete_queues", "require_server", "server_url", "test_vhost"]

_lock = threading.Lock()
_vhost: str | None = None


#: Tests that use RabbitMQ hold this file locked shared; a test that restarts RabbitMQ holds it
#: exclusively, so test runs in other processes on this machine never see the restart.
LOCK_FILE = os.path.join(os.environ.get("TMPDIR", "/tmp"), "celeriac-rabbitmq-tests.lock")


@contextlib.contextmanager
def broker_lock(*, exclusive: bool = False) -> Iterator[None]:
    """Hold the machine-wide RabbitMQ test lock (shared, or exclusive to restart RabbitMQ)."""
    with open(LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _base() -> str:
    return os.environ.get("CELERIAC_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672").rstrip("/")


def _rabbitmqctl(*args: str) -> bool:
    executable = shutil.which("rabbitmqctl")
    if executable is None:
        return False
    try:
        done = subprocess.run([executable, *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def test_vhost() -> str:
    """This process's test virtual host (created on first call; ``/`` without rabbitmqctl)."""
    global _vhost
    with _lock:
        if _vhost is None:
            name = f"celeriac-test-{uuid.uuid4().hex[:12]}"
            user = amqp_user()
            if _rabbitmqctl("add_vhost", name) and _rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*"):
                atexit.register(_rabbitmqctl, "delete_vhost", name)
                _vhost = name
                _declare_delay_levels(server_url(name))
            else:
                _vhost = "/"
        return _vhost


test_vhost.__test__ = False  # type: ignore[attr-defined]  # not a test for pytest to collect


def _declare_delay_levels(url: str) -> None:
    """Declare the delay levels up front, as they are on any vhost that ever delayed a message.

    In a fresh vhost the first delayed publish creates 32 durable queues first (~0.1 s, more on
    a loaded machine), which would eat into the short ETAs the tests use.
    """
    from celeriac.plugins.amqp._transport import AMQPTransport

    transport = AMQPTransport(url)
    try:
        transport.declare_delay_levels()
    finally:
        transport.close()


def amqp_user() -> str:
    """The user name in the test server's URL."""
    rest = _base().partition("://")[2]
    credentials = rest.rpartition("@")[0]
    return credentials.partition(":")[0] or "guest"


def server_url(vhost: str | None = None) -> str:
    """The test server's URL for ``vhost`` (default: this process's test virtual host)."""
    vhost = vhost if vhost is not None else test_vhost()
    return f"{_base()}//" if vhost == "/" else f"{_base()}/{quote(vhost, safe='')}"


def require_server(url: str | None = None) -> None:
    """Skip the calling test (fail it under ``CI=true``) when no RabbitMQ answers at ``url``."""
    import pytest

    url = url or server_url("/")
    rest = url.partition("://")[2]
    credentials, _, location = rest.rpartition("@")
    user, _, password = credentials.partition(":")
    host = location.partition("/")[0] or "127.0.0.1:5672"
    try:
        connection = amqp.Connection(host, userid=user or "guest", password=password or "guest", connect_timeout=2)
        connection.connect()
        connection.close()
    except Exception as exc:
        message = (
            f"no RabbitMQ at {host} ({exc}); start one with `rabbitmq-server -detached` "
            f"or point CELERIAC_TEST_AMQP at one"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


def delete_queues(url: str, *names: str) -> None:
    """Delete queues (and their dead-letter queues) at ``url``; missing ones are fine."""
    from kombu.connection import Connection

    with Connection(url, connect_timeout=2) as connection:  # type: ignore[no-untyped-call]
        channel = connection.default_channel
        for name in names:
            for queue in (name, f"{name}.dead-letter"):
                try:
                    channel.queue_delete(queue)
                except Exception:
                    channel = connection.channel()
