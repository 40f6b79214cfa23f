"""What the sqlite transport does beyond the conformance suite: URLs, options, leases, errors,
other processes, durability. Every file lives under ``tmp_path``."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import celeriac
import pytest
from celeriac.plugins import sqlite
from celeriac.plugins.sqlite._database import Database, SQLiteBrokerError, parse_settings
from celeriac.plugins.sqlite._transport import SQLiteTransport
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

pytestmark = pytest.mark.timeout(60)

LONG_TIMEOUT = 5.0


def make_envelope(number: int, priority: int | None = None) -> celeriac.Envelope:
    properties = {} if priority is None else {"priority": priority}
    return celeriac.Envelope(
        body=b"%d" % number, content_type="application/json", headers={"number": number}, properties=properties
    )


def numbers(deliveries: list[celeriac.Delivery]) -> list[int]:
    return [delivery.envelope.headers["number"] for delivery in deliveries]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'broker.db'}"


@pytest.fixture
def open_transport(url: str) -> Iterator[Callable[..., SQLiteTransport]]:
    opened: list[SQLiteTransport] = []

    def open_(**options: Any) -> SQLiteTransport:
        transport = SQLiteTransport(url, options)
        opened.append(transport)
        return transport

    yield open_
    for transport in opened:
        transport.close()


@pytest.fixture
def transport(open_transport: Callable[..., SQLiteTransport]) -> SQLiteTransport:
    return open_transport()


def count_rows(path: Path, table: str) -> int:
    connection = sqlite3.connect(path)
    try:
        count: int = connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    finally:
        connection.close()
    return count


# -- the plugin hooks ------------------------------------------------------------------------


def test_hook_serves_the_sqlite_scheme_only(url: str) -> None:
    transport = sqlite.celeriac_transport(url=url, scheme="sqlite", options={"visibility_timeout": 2})

    assert isinstance(transport, SQLiteTransport)
    assert transport.visibility_timeout == 2.0
    assert sqlite.celeriac_transport(url="memory://", scheme="memory", options={}) is None
    assert sqlite.celeriac_transport_schemes() == ["sqlite"]
    transport.close()


def test_other_processes_reach_the_queues_and_leases_need_extension(transport: SQLiteTransport) -> None:
    assert transport.shared_between_processes is True
    assert transport.needs_lease_extension is True
    assert transport.visibility_timeout == 60.0
    info = transport.info()
    assert info["transport"] == "SQLiteTransport"
    assert info["path"] == str(transport.path)


def test_an_app_selects_it_by_url(tmp_path: Path) -> None:
    app = celeriac.Celeriac(
        "t", broker_url=f"sqlite:///{tmp_path / 'app.db'}", result_store="memory://", environ={}, set_as_current=False
    )
    try:
        assert isinstance(app.transport, SQLiteTransport)
    finally:
        app.close()


# -- URLs --------------------------------------------------------------------------------------


def test_relative_absolute_and_default_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    relative = SQLiteTransport("sqlite:///sub/relative.db")
    absolute = SQLiteTransport(f"sqlite:///{tmp_path / 'absolute.db'}")
    default = SQLiteTransport("sqlite://")
    try:
        assert relative.path == tmp_path / "sub" / "relative.db"
        assert absolute.path == tmp_path / "absolute.db"
        assert default.path == tmp_path / "celeriac.db"
        assert all(path.is_file() for path in (relative.path, absolute.path, default.path))
    finally:
        for transport in (relative, absolute, default):
            transport.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://host/x.db", "a sqlite URL has no host"),
        ("sqlite:///x.db?timeout=3", r"takes no \?query"),
        ("sqlite:///:memory:", "cannot be shared between processes"),
    ],
)
def test_malformed_urls_are_config_errors(url: str, message: str) -> None:
    with pytest.raises(celeriac.ConfigError, match=message):
        SQLiteTransport(url)


def test_a_missing_directory_is_a_clear_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such"
    with pytest.raises(celeriac.ConfigError) as caught:
        SQLiteTransport(f"sqlite:///{missing / 'broker.db'}")

    message = str(caught.value)
    assert f"directory {missing} does not exist" in message
    assert "create it" in message
    assert "\n" not in message
    assert not missing.exists()


def test_a_directory_as_the_file_is_a_clear_config_error(tmp_path: Path) -> None:
    with pytest.raises(celeriac.ConfigError, match="is a directory"):
        SQLiteTransport(f"sqlite:///{tmp_path}")


# -- options -----------------------------------------------------------------------------------


def test_options_are_checked() -> None:
    settings = parse_settings(
        {"visibility_timeout": 5, "busy_timeout": 0, "polling_interval": 0.2, "synchronous": "full"}
    )
    assert (settings.visibility_timeout, settings.busy_timeout, settings.polling_interval) == (5.0, 0.0, 0.2)
    assert settings.synchronous == "FULL"
    with pytest.raises(celeriac.ConfigError, match="unknown option 'visiblity_timeout'"):
        parse_settings({"visiblity_timeout": 5})
    with pytest.raises(celeriac.ConfigError, match=r"visibility_timeout: expected a positive number"):
        parse_settings({"visibility_timeout": 0})
    with pytest.raises(celeriac.ConfigError, match=r"busy_timeout: expected a number of seconds >= 0"):
        parse_settings({"busy_timeout": "5"})
    with pytest.raises(celeriac.ConfigError, match=r"synchronous: expected one of NORMAL, FULL"):
        parse_settings({"synchronous": "OFF"})


# -- leases ------------------------------------------------------------------------------------


def test_expired_lease_counts_deliveries_and_the_stale_holder_cannot_settle(
    open_transport: Callable[..., SQLiteTransport],
) -> None:
    stuck, healthy = open_transport(visibility_timeout=0.3), open_transport(visibility_timeout=0.3)
    stuck.publish(make_envelope(1), "q")
    [held] = stuck.fetch(["q"], limit=1, timeout=LONG_TIMEOUT)
    assert (held.redelivered, held.delivery_count) == (False, 1)

    [again] = healthy.fetch(["q"], limit=1, timeout=LONG_TIMEOUT)

    assert (again.redelivered, again.delivery_count) == (True, 2)
    stuck.extend_lease([held], 60)
    stuck.reject(held, requeue=True)
    stuck.dead_letter(held, "stale")
    stuck.ack(held)
    assert healthy.queue_length(stuck.dead_letter_queue("q")) == 0
    healthy.extend_lease([again], 60)  # the live holder keeps it
    assert stuck.fetch(["q"], limit=1, timeout=0.5) == []
    healthy.ack(again)
    assert count_rows(healthy.path, "celeriac_messages") == 0


def test_the_same_transport_cannot_settle_an_older_delivery(transport: SQLiteTransport) -> None:
    transport.publish(make_envelope(1), "q")
    [first] = transport.fetch(["q"], limit=1, timeout=LONG_TIMEOUT)
    transport.reject(first, requeue=True)
    [second] = transport.fetch(["q"], limit=1, timeout=LONG_TIMEOUT)

    transport.ack(first)  # an old tag: the message is leased again under a new count

    assert first.tag != second.tag
    assert transport.fetch(["q"], limit=1, timeout=0.05) == []
    transport.ack(second)
    assert count_rows(transport.path, "celeriac_messages") == 0


def test_foreign_tags_are_ignored(transport: SQLiteTransport) -> None:
    transport.publish(make_envelope(1), "q")
    foreign = celeriac.Delivery(make_envelope(1), "q", tag="1-0")

    transport.ack(foreign)
    transport.ack_many([foreign])
    transport.reject(foreign, requeue=False)
    transport.dead_letter(foreign, "x")
    transport.extend_lease([foreign], 10)

    assert transport.queue_length("q") == 1


def test_dead_letter_keeps_body_and_priority_and_starts_counting_again(transport: SQLiteTransport) -> None:
    transport.publish(make_envelope(7, priority=6), "q")
    [delivery] = transport.fetch(["q"], limit=1, timeout=LONG_TIMEOUT)

    transport.dead_letter(delivery, "cannot decode")

    [dead] = transport.fetch(["q.dead-letter"], limit=1, timeout=LONG_TIMEOUT)
    assert dead.envelope.body == b"7"
    assert dead.envelope.priority == 6
    assert dead.envelope.headers["x-death-queue"] == "q"
    assert isinstance(dead.envelope.headers["x-death-time"], float)
    assert (dead.redelivered, dead.delivery_count) == (False, 1)
    assert transport.queue_length("q") == 0


# -- delayed messages, queue length, purge ----------------------------------------------------


def test_purge_keeps_future_messages_and_counts_due_ones(transport: SQLiteTransport) -> None:
    now = time.time()
    transport.publish(make_envelope(1), "q", eta=now + 3600)
    transport.publish(make_envelope(2), "q", eta=now + 0.05)
    transport.publish(make_envelope(3), "q")
    deadline = time.monotonic() + LONG_TIMEOUT
    while transport.queue_length("q") < 2 and time.monotonic() < deadline:
        transport.fetch(["other"], limit=1, timeout=0.02)  # a blocking wait, not a sleep

    assert transport.queue_length("q") == 2
    assert transport.purge("q") == 2
    assert transport.queue_length("q") == 0
    assert count_rows(transport.path, "celeriac_messages") == 1  # the one due in an hour


def test_expired_leases_count_as_ready(open_transport: Callable[..., SQLiteTransport]) -> None:
    holder = open_transport(visibility_timeout=0.2)
    holder.publish(make_envelope(1), "q")
    [held] = holder.fetch(["q"], limit=1, timeout=LONG_TIMEOUT)
    assert holder.queue_length("q") == 0
    deadline = time.monotonic() + LONG_TIMEOUT
    while holder.queue_length("q") == 0 and time.monotonic() < deadline:
        holder.fetch(["other"], limit=1, timeout=0.05)

    assert holder.queue_length("q") == 1
    assert holder.purge("q") == 1
    holder.ack(held)


# -- durability and other processes -----------------------------------------------------------


def test_messages_survive_closing_every_transport(url: str) -> None:
    first = SQLiteTransport(url)
    first.publish_many([(make_envelope(number), "q") for number in range(3)])
    first.publish(make_envelope(9), "q", eta=time.time() + 3600)
    first.close()

    second = SQLiteTransport(url)
    try:
        assert numbers(second.fetch(["q"], limit=10, timeout=LONG_TIMEOUT)) == [0, 1, 2]
        assert count_rows(second.path, "celeriac_messages") == 4
    finally:
        second.close()


PUBLISHER = """
import sys, time
from celeriac import Envelope
from celeriac.plugins.sqlite._transport import SQLiteTransport

transport = SQLiteTransport(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
transport.publish(Envelope(body=b"x", content_type="text/plain", headers={"number": 42}), "q")
transport.close()
"""


def test_a_publish_from_another_process_wakes_a_blocked_fetch(transport: SQLiteTransport, url: str) -> None:
    results: list[list[celeriac.Delivery]] = []
    with subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        fetcher = threading.Thread(target=lambda: results.append(transport.fetch(["q"], limit=1, timeout=30)))
        fetcher.start()
        child.stdin.write("go\n")
        child.stdin.flush()
        fetcher.join(30)
        child.stdin.close()
        assert child.wait(30) == 0
    assert not fetcher.is_alive()
    assert numbers(results[0]) == [42]


def test_data_version_moves_only_on_commits_by_other_connections(tmp_path: Path) -> None:
    settings = parse_settings({})
    database = Database(tmp_path / "v.db", settings)
    try:
        before = database.data_version()
        with database.transaction("write") as connection:
            connection.execute("INSERT INTO celeriac_meta VALUES ('own', 'x')")
        assert database.data_version() == before
        with sqlite3.connect(tmp_path / "v.db") as other:
            other.execute("INSERT INTO celeriac_meta VALUES ('other', 'y')")
        assert database.data_version() != before
    finally:
        database.close()


# -- waiting -----------------------------------------------------------------------------------


def test_an_idle_fetch_backs_off_instead_of_busy_polling(
    transport: SQLiteTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    probes: list[float] = []
    probe = transport._probe

    def counting(names: Any) -> Any:
        probes.append(time.monotonic())
        return probe(names)

    monkeypatch.setattr(transport, "_probe", counting)
    started = time.monotonic()

    assert transport.fetch(["q"], limit=1, timeout=1.0) == []

    elapsed = time.monotonic() - started
    # 1, 2, 4 ... 32 ms then every 50 ms: about 26 probes a second when nothing changes.
    assert 1 <= len(probes) <= 10 + elapsed / transport.settings.polling_interval


def test_wake_and_close_end_a_blocked_fetch(open_transport: Callable[..., SQLiteTransport]) -> None:
    for end in ("wake", "close"):
        transport = open_transport()
        results: list[list[celeriac.Delivery]] = []
        fetcher = threading.Thread(
            target=lambda t=transport, into=results: into.append(t.fetch(["q"], limit=1, timeout=30))
        )
        fetcher.start()
        getattr(transport, end)()
        fetcher.join(LONG_TIMEOUT * 2)
        assert not fetcher.is_alive(), f"{end} did not end the fetch"
        assert results == [[]]


def test_a_closed_transport_refuses_work(transport: SQLiteTransport) -> None:
    transport.close()
    transport.close()
    for call in (
        lambda: transport.publish(make_envelope(1), "q"),
        lambda: transport.fetch(["q"], limit=1, timeout=0),
        lambda: transport.broadcast("c", make_envelope(1)),
        lambda: transport.subscribe("c"),
    ):
        with pytest.raises(celeriac.TransportError, match="closed"):
            call()


# -- broadcast ---------------------------------------------------------------------------------


def test_old_broadcasts_are_swept_after_their_ttl(open_transport: Callable[..., SQLiteTransport]) -> None:
    sender = open_transport(broadcast_ttl=0.05)
    listener = open_transport()
    with listener.subscribe("c") as subscription:
        sender.broadcast("c", make_envelope(1))
        assert _number(subscription.get(LONG_TIMEOUT)) == 1
        assert subscription.get(0.1) is None  # the first broadcast is now older than its ttl
        sender._next_broadcast_sweep = 0.0  # sweep on the next broadcast

        sender.broadcast("c", make_envelope(2))

        assert count_rows(sender.path, "celeriac_broadcasts") == 1
        assert _number(subscription.get(LONG_TIMEOUT)) == 2
        assert subscription.get(0.05) is None


def _number(envelope: celeriac.Envelope | None) -> int | None:
    return None if envelope is None else int(envelope.headers["number"])


# -- errors: corrupt, locked, incompatible -----------------------------------------------------


def test_a_corrupt_file_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "broker.db"
    path.write_bytes(b"this is not a database, just text that fills a page " * 100)

    with pytest.raises(SQLiteBrokerError) as caught:
        SQLiteTransport(f"sqlite:///{path}")

    message = str(caught.value)
    assert str(path) in message
    assert "not a usable SQLite database" in message
    assert "move it away" in message
    assert "\n" not in message
    assert isinstance(caught.value, celeriac.TransportError)
    assert isinstance(caught.value, celeriac.HandledError)


def test_a_database_locked_too_long_is_a_bounded_one_line_error(url: str, tmp_path: Path) -> None:
    transport = SQLiteTransport(url, {"busy_timeout": 0.2})
    transport.publish(make_envelope(1), "q")
    locker = sqlite3.connect(tmp_path / "broker.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        with pytest.raises(celeriac.TransportError) as caught:
            transport.publish(make_envelope(2), "q")
        assert time.monotonic() - started < LONG_TIMEOUT
        message = str(caught.value)
        assert "locked" in message and "busy_timeout=0.2s" in message and str(tmp_path) in message
        with pytest.raises(celeriac.TransportError, match="locked"):
            transport.fetch(["q"], limit=1, timeout=0)
        assert transport.queue_length("q") == 1  # readers are not blocked (WAL)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    # the lock is gone: everything works again
    transport.publish(make_envelope(2), "q")
    assert numbers(transport.fetch(["q"], limit=2, timeout=LONG_TIMEOUT)) == [1, 2]
    transport.close()


def test_a_file_from_an_incompatible_version_is_refused(url: str, tmp_path: Path) -> None:
    SQLiteTransport(url).close()
    with sqlite3.connect(tmp_path / "broker.db") as connection:
        connection.execute("UPDATE celeriac_meta SET value = '99' WHERE key = 'transport_schema'")

    with pytest.raises(celeriac.ConfigError, match="transport schema version '99'"):
        SQLiteTransport(url)


# -- a model ----------------------------------------------------------------------------------


class OrderModelMachine(RuleBasedStateMachine):
    """Publish, fetch, settle and reconnect in any order. A fetch returns exactly the ready
    messages a model predicts (priority desc, then publish order, requeued ones in their old
    place); nothing is lost or delivered twice; a stale settle changes nothing."""

    queue = "q"

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="celeriac-sqlite-model-"))
        self.url = f"sqlite:///{self.directory / 'model.db'}"
        self.producer = SQLiteTransport(self.url)
        self.consumers = [SQLiteTransport(self.url), SQLiteTransport(self.url)]
        self.next_number = 0
        #: number -> priority of every message ready on the queue
        self.ready: dict[int, int] = {}
        self.held: list[tuple[int, celeriac.Delivery, int]] = []
        self.settled: list[celeriac.Delivery] = []
        self.dead_lettered = 0

    @rule(priority=st.integers(0, 9), count=st.integers(1, 3), batch=st.booleans())
    def publish(self, priority: int, count: int, batch: bool) -> None:
        numbers_ = range(self.next_number, self.next_number + count)
        envelopes = [(make_envelope(number, priority), self.queue) for number in numbers_]
        if batch:
            self.producer.publish_many(envelopes)
        else:
            for envelope, queue in envelopes:
                self.producer.publish(envelope, queue)
        self.ready.update(dict.fromkeys(numbers_, priority))
        self.next_number += count

    @rule(consumer=st.integers(0, 1), limit=st.integers(1, 5))
    def fetch(self, consumer: int, limit: int) -> None:
        expected = sorted(self.ready, key=lambda number: (-self.ready[number], number))[:limit]

        deliveries = self.consumers[consumer].fetch([self.queue], limit=limit, timeout=0)

        assert numbers(deliveries) == expected
        for delivery in deliveries:
            number = delivery.envelope.headers["number"]
            self.held.append((consumer, delivery, self.ready.pop(number)))

    @precondition(lambda self: self.held)
    @rule(data=st.data(), outcome=st.sampled_from(["ack", "requeue", "drop", "dead-letter"]))
    def settle(self, data: st.DataObject, outcome: str) -> None:
        consumer, delivery, priority = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        transport = self.consumers[consumer]
        if outcome == "ack":
            transport.ack(delivery)
        elif outcome == "requeue":
            transport.reject(delivery, requeue=True)
            self.ready[delivery.envelope.headers["number"]] = priority
        elif outcome == "drop":
            transport.reject(delivery, requeue=False)
        else:
            transport.dead_letter(delivery, "test")
            self.dead_lettered += 1
        self.settled.append(delivery)

    @precondition(lambda self: self.settled)
    @rule(data=st.data(), requeue=st.booleans())
    def settle_again(self, data: st.DataObject, requeue: bool) -> None:
        delivery = data.draw(st.sampled_from(self.settled))
        for transport in self.consumers:
            transport.reject(delivery, requeue=requeue)
            transport.dead_letter(delivery, "again")
            transport.ack(delivery)

    @rule(consumer=st.integers(0, 1))
    def reconnect(self, consumer: int) -> None:
        self.consumers[consumer].close()
        self.consumers[consumer] = SQLiteTransport(self.url)
        for index, delivery, priority in self.held:
            if index == consumer:
                self.ready[delivery.envelope.headers["number"]] = priority
        self.held = [entry for entry in self.held if entry[0] != consumer]

    @invariant()
    def counts_match_the_model(self) -> None:
        assert self.producer.queue_length(self.queue) == len(self.ready)
        assert self.producer.queue_length("q.dead-letter") == self.dead_lettered

    def teardown(self) -> None:
        for transport in [self.producer, *self.consumers]:
            transport.close()
        shutil.rmtree(self.directory, ignore_errors=True)


TestOrderModel = OrderModelMachine.TestCase
TestOrderModel.settings = settings(deadline=None, max_examples=40, stateful_step_count=30)


def test_a_forked_child_closing_an_inherited_transport_keeps_the_parents_leases(
    transport: SQLiteTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport.publish(make_envelope(1), "q")
    [held] = transport.fetch(["q"], limit=1, timeout=LONG_TIMEOUT)
    monkeypatch.setattr(transport, "_creator_pid", -1)  # as seen from a child after fork

    transport.close()

    observer = SQLiteTransport(f"sqlite:///{transport.path}")
    try:
        assert observer.queue_length("q") == 0  # still leased to the parent
        assert held.delivery_count == 1
    finally:
        observer.close()
