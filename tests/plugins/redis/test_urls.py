"""Redis URLs end to end: ``unix://`` sockets (transport, result store, a worker round trip on a
private ``redis-server --port 0 --unixsocket``), bad URLs failing with one line naming the
setting, and the sweep forgetting the consumers of killed workers (shared server, database 7)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celeriac
import pytest
import redis
from celeriac.cli import main
from celeriac.plugins.redis import _testing
from celeriac.plugins.redis._transport import RedisTransport
from celeriac.plugins.resultstores._redis import RedisResultStore
from celeriac.testing import wait_for

pytestmark = pytest.mark.timeout(60)

SWEEP_DB = 7
GROUP = "celeriac"


class UnixRedis:
    """A private ``redis-server`` listening only on a unix socket."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        # A short directory: a socket path may not exceed ~107 bytes (pytest's tmp_path can).
        self.directory = Path(tempfile.mkdtemp(prefix="celeriac-", dir="/tmp"))
        self.socket = self.directory / "r.sock"
        options = ["--unixsocket", str(self.socket), "--unixsocketperm", "700", "--dir", str(self.directory)]
        self.process = subprocess.Popen(
            [binary, "--port", "0", *options, "--save", "", "--appendonly", "no", "--daemonize", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(unix_socket_path=str(self.socket), socket_connect_timeout=0.5)
        try:

            def up() -> bool:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server on {self.socket} exited with {self.process.returncode}")
                try:
                    return bool(client.ping())
                except (redis.exceptions.ConnectionError, OSError):
                    return False

            wait_for(up, timeout=10, interval=0.02, message=f"redis-server on {self.socket} did not start")
        finally:
            client.close()

    def url(self, database: int, **query: Any) -> str:
        extra = "".join(f"&{key}={value}" for key, value in query.items())
        return f"unix://{self.socket}?db={database}{extra}"

    def client(self, database: int) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket), db=database)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def unix_redis() -> Iterator[UnixRedis]:
    server = UnixRedis()
    try:
        yield server
    finally:
        server.close()


# -- unix:// sockets ---------------------------------------------------------------------------


def test_the_transport_works_over_a_unix_socket_in_the_database_of_the_url(unix_redis: UnixRedis) -> None:
    transport = RedisTransport(unix_redis.url(5, visibility_timeout=30))
    raw = unix_redis.client(5)
    try:
        assert transport.visibility_timeout == 30.0
        assert transport.where == f"unix:{unix_redis.socket}"
        transport.publish(celeriac.Envelope(b"hello", "application/json"), "sock")
        assert raw.xlen(transport.stream_key("sock")) == 1  # database 5, not 0
        deliveries = wait_for(lambda: transport.fetch(["sock"], limit=1, timeout=1.0), timeout=10)
        assert [delivery.envelope.body for delivery in deliveries] == [b"hello"]
        transport.ack(deliveries[0])
        assert transport.queue_length("sock") == 0
        assert raw.xlen(transport.stream_key("sock")) == 0
    finally:
        transport.close()
        raw.close()


def test_the_result_store_works_over_a_unix_socket_in_the_database_of_the_url(unix_redis: UnixRedis) -> None:
    store = RedisResultStore(unix_redis.url(5, global_keyprefix="p:", socket_keepalive="true"))
    raw = unix_redis.client(5)
    try:
        record = celeriac.ResultRecord("t1", "SUCCESS", b'"ok"', "application/json", "utf-8")
        store.set(record, expires=60)
        assert raw.exists("p:celery-task-meta-t1") == 1
        assert store.get("t1") == record
        assert store.wait("t1", states=frozenset({"SUCCESS"}), timeout=5) == record
    finally:
        store.close()
        raw.close()


@pytest.mark.e2e
def test_a_worker_round_trip_over_a_unix_socket(unix_redis: UnixRedis, project: Any) -> None:
    queue = f"sock-{uuid.uuid4().hex[:8]}"
    project.configure(unix_redis.url(5), unix_redis.url(6), queue)
    project.start_worker()
    app = celeriac.Celeriac(
        "client", broker_url=unix_redis.url(5), result_store=unix_redis.url(6), environ={}, set_as_current=False
    )
    try:
        before = time.time()
        ran_at = app.send_task("redis_tasks.stamp", ["unix"], queue=queue).get(timeout=30)
        assert ran_at >= before
        assert [event[:2] for event in project.events()] == [("run", "unix")]
    finally:
        app.close()


# -- bad URLs ----------------------------------------------------------------------------------

BAD_URLS = [
    ("redis://127.0.0.1:notaport/5", "port 'notaport' is not a number from 0 to 65535"),
    ("redis://127.0.0.1:6379/5?bogus_option=1", "unknown query option 'bogus_option'; accepted: client_name, db, "),
    ("redis://127.0.0.1:6379/abc", "database 'abc' in the path is not a number"),
    ("unix:///tmp/r.sock?db=five", "db='five' is not a number"),
    ("redis://127.0.0.1:6379/5?ssl_cert_reqs=none", "unknown query option 'ssl_cert_reqs'"),  # rediss:// only
]


@pytest.mark.parametrize(("url", "problem"), BAD_URLS)
def test_a_bad_broker_url_is_one_config_error_naming_the_setting(url: str, problem: str) -> None:
    with pytest.raises(celeriac.ConfigError) as info:
        RedisTransport(url)
    message = str(info.value)
    assert message.startswith(f"broker_url: {problem}")
    assert "\n" not in message


@pytest.mark.parametrize(("url", "problem"), BAD_URLS)
def test_a_bad_result_store_url_is_one_config_error_naming_the_setting(url: str, problem: str) -> None:
    with pytest.raises(celeriac.ConfigError) as info:
        RedisResultStore(url)
    message = str(info.value)
    assert message.startswith(f"result_store: {problem}")
    assert "\n" not in message


def test_the_accepted_query_keys_are_named_and_work() -> None:
    with pytest.raises(celeriac.ConfigError) as info:
        RedisTransport("redis://127.0.0.1:6379/7?bogus=1")
    assert str(info.value) == (
        "broker_url: unknown query option 'bogus'; accepted: client_name, db, global_keyprefix, "
        "health_check_interval, max_connections, publish_timeout, socket_connect_timeout, socket_keepalive, "
        "socket_timeout, visibility_timeout"
    )
    transport = RedisTransport("redis://127.0.0.1:6379/3?db=7&client_name=celeriac-test&health_check_interval=5")
    try:
        kwargs = transport._client.connection_pool.connection_kwargs
        assert (kwargs["db"], kwargs["client_name"], kwargs["health_check_interval"]) == (7, "celeriac-test", 5)
    finally:
        transport.close()


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("broker_url", "celeriac: broker_url: unknown query option 'bogus_option'; accepted: client_name, db, "),
        ("result_store", "celeriac: result_store: port 'notaport' is not a number from 0 to 65535"),
    ],
)
def test_celeriac_call_reports_a_bad_url_in_one_line(
    setting: str,
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    urls = {"broker_url": "redis://127.0.0.1:6379/7", "result_store": "redis://127.0.0.1:6379/7"}
    urls[setting] = {
        "broker_url": "redis://127.0.0.1:6379/7?bogus_option=1",
        "result_store": "redis://127.0.0.1:notaport/7",
    }[setting]
    (tmp_path / "celeriac.toml").write_text("[celeriac]\n" + "".join(f'{k} = "{v}"\n' for k, v in urls.items()))
    monkeypatch.chdir(tmp_path)
    for key in [key for key in __import__("os").environ if key.startswith("CELERIAC_")]:
        monkeypatch.delenv(key)
    with pytest.raises(SystemExit) as info:
        main(["call", "redis_tasks.stamp", "--args", '["x"]', "--wait", "--timeout", "5"])
    out, err = capsys.readouterr()
    assert info.value.code == 2
    assert out == ""
    assert err.startswith(expected)
    assert err.count("\n") == 1 and "Traceback" not in err


# -- the sweep forgets killed workers' consumers -----------------------------------------------


@pytest.fixture
def sweep_url() -> Iterator[str]:
    url = _testing.server_url(SWEEP_DB)
    _testing.require_server(url)
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    yield f"{url}?global_keyprefix={prefix}"
    _testing.delete_keys(url, prefix)


def consumers(transport: RedisTransport, queue: str) -> dict[str, int]:
    """Consumer name -> pending entries, from ``XINFO CONSUMERS``."""
    client = transport._client
    return {
        entry["name"].decode(): entry["pending"] for entry in client.xinfo_consumers(transport.stream_key(queue), GROUP)
    }


def test_the_sweep_deletes_consumers_of_dead_workers_but_live_ones_keep_working(
    sweep_url: str,
) -> None:
    queue = f"sweep-{uuid.uuid4().hex[:8]}"
    opened: list[RedisTransport] = []

    def open_(visibility: float) -> RedisTransport:
        transport = RedisTransport(sweep_url, {"visibility_timeout": visibility})
        opened.append(transport)
        return transport

    def fetch_one(transport: RedisTransport) -> celeriac.Delivery:
        deliveries: list[celeriac.Delivery] = wait_for(
            lambda: transport.fetch([queue], limit=1, timeout=0.5), timeout=10
        )
        return deliveries[0]

    # Claims and deletions use the sweeping consumer's visibility timeout: only the sweeper's is short.
    holder, empty, idle, sweeper = open_(60), open_(60), open_(60), open_(0.3)
    try:
        for number in range(3):
            holder.publish(celeriac.Envelope(b"%d" % number, "application/json"), queue)
        fetch_one(holder)  # "killed" holding an entry: never renews, acks or closes
        empty.ack(fetch_one(empty))  # "killed" holding nothing
        held = fetch_one(idle)  # alive, but does not read again for a while
        idle.ack(held)
        assert set(consumers(sweeper, queue)) == {holder.consumer, empty.consumer, idle.consumer}

        # The sweeper claims the holder's entry, then forgets every consumer idle past the
        # visibility timeout that holds nothing: both dead ones (and the idle live one).
        claimed = fetch_one(sweeper)
        assert claimed.envelope.body == b"0"
        sweeper.ack(claimed)
        wait_for(
            lambda: (
                sweeper.fetch([queue], limit=1, timeout=0.2) == []
                and set(consumers(sweeper, queue)) == {sweeper.consumer}
            ),
            timeout=10,
            message="dead consumers were not deleted",
        )

        # A live consumer that was forgotten loses nothing: its next read creates it again.
        sweeper.publish(celeriac.Envelope(b"again", "application/json"), queue)
        delivery = fetch_one(idle)
        assert delivery.envelope.body == b"again"
        assert consumers(sweeper, queue)[idle.consumer] == 1
        idle.ack(delivery)
        assert consumers(sweeper, queue)[idle.consumer] == 0
    finally:
        for transport in opened:
            transport.close()


def test_the_default_visibility_timeout_reruns_a_killed_workers_task_within_a_minute() -> None:
    transport = RedisTransport("redis://127.0.0.1:6379/7")
    try:
        # a claim happens visibility_timeout after the last lease renewal, found by the next
        # sweep (a period of at most 5 s)
        assert transport.visibility_timeout + transport._sweep_period <= 50
    finally:
        transport.close()
