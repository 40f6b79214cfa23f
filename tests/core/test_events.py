"""Events on the memory transport: dispatcher batching, receiver, and the State model."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from celeriac import Celeriac
from celeriac.events import EventDispatcher, State, decode_events, encode_events, event
from celeriac.testing import start_worker, wait_for

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def captured(app: Celeriac) -> Iterator[tuple[State, list[dict[str, Any]]]]:
    """A State and the raw events, fed by a receiver thread until the test ends."""
    state = app.events.State()
    seen: list[dict[str, Any]] = []

    def both(item: dict[str, Any]) -> None:
        seen.append(item)
        state.event(item)

    receiver = app.events.Receiver(handlers={"*": both})
    thread = threading.Thread(target=receiver.capture, daemon=True)
    thread.start()
    yield state, seen
    receiver.close()
    thread.join(5)


def test_dispatcher_batches_events_into_one_broadcast(app: Celeriac) -> None:
    subscription = app.transport.subscribe(app.conf.event_channel)
    dispatcher = EventDispatcher(app, "node@test", flush_interval=30.0, batch_size=1000)
    for number in range(50):
        dispatcher.send("task-received", uuid=f"id-{number}")
    assert subscription.get(0.05) is None  # nothing sent yet: it waits for the batch
    dispatcher.flush()
    envelope = subscription.get(2.0)
    assert envelope is not None
    events = decode_events(envelope)
    assert [item["uuid"] for item in events] == [f"id-{number}" for number in range(50)]
    assert [item["clock"] for item in events] == list(range(1, 51))
    assert {item["hostname"] for item in events} == {"node@test"}
    assert all({"timestamp", "utcoffset", "pid"} <= set(item) for item in events)
    assert subscription.get(0.05) is None  # one broadcast for the whole batch
    dispatcher.close()
    subscription.close()


def test_disabled_dispatcher_sends_nothing(app: Celeriac) -> None:
    subscription = app.transport.subscribe(app.conf.event_channel)
    dispatcher = EventDispatcher(app, "node@test", enabled=False)
    dispatcher.send("task-received", uuid="x")
    dispatcher.close()
    assert subscription.get(0.2) is None
    subscription.close()


def test_receiver_ignores_foreign_messages_and_honours_limit(app: Celeriac) -> None:
    from celeriac import Envelope

    with app.events.Receiver() as receiver:
        app.transport.broadcast(app.conf.event_channel, Envelope(b"not json", "text/plain"))
        app.transport.broadcast(app.conf.event_channel, encode_events([event("worker-heartbeat", hostname="a")] * 3))
        got = list(receiver.itercapture(limit=2, timeout=5))
    assert [item["type"] for item in got] == ["worker-heartbeat", "worker-heartbeat"]
    assert all(isinstance(item["local_received"], float) for item in got)


def test_worker_task_events_arrive_in_order_and_state_matches_results(
    app: Celeriac, captured: tuple[State, list[dict[str, Any]]]
) -> None:
    state, seen = captured
    app.conf.update({"worker_send_task_events": True, "worker_heartbeat_interval": 0.2})

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def fail() -> None:
        raise ValueError("expected")

    with start_worker(app, concurrency=2, name="events@test"):
        results = [add.delay(n, n) for n in range(5)] + [fail.delay()]
        for result in results:
            result.get(timeout=10, propagate=False)
        wait_for(lambda: all(r.id in state.tasks and state.tasks[r.id].ready for r in results), 10)
        wait_for(lambda: len(state.workers.get("events@test", _Nothing()).heartbeats) >= 2, 10)
        assert [w.hostname for w in state.alive_workers()] == ["events@test"]
    wait_for(lambda: any(item["type"] == "worker-offline" for item in seen), 10)
    assert not state.workers["events@test"].alive
    for result in results:
        task = state.tasks[result.id]
        assert task.state == result.state
        assert task.worker == "events@test"
        kinds = [item["type"] for item in sorted(seen, key=lambda i: i["clock"]) if item.get("uuid") == result.id]
        final = "task-failed" if result.state == "FAILURE" else "task-succeeded"
        assert kinds == ["task-received", "task-started", final]
    assert state.tasks[results[0].id].result == "0"
    assert state.tasks[results[-1].id].exception == "ValueError('expected')"
    assert "ValueError" in (state.tasks[results[-1].id].traceback or "")
    assert state.tasks[results[0].id].runtime is not None
    online = [item for item in seen if item["type"] == "worker-online"]
    assert online and online[0]["sw_ident"] == "celeriac" and online[0]["freq"] == 0.2


class _Nothing:
    heartbeats: tuple[()] = ()


def test_task_events_are_off_by_default_but_heartbeats_are_not(
    app: Celeriac, captured: tuple[State, list[dict[str, Any]]]
) -> None:
    state, seen = captured

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with start_worker(app, name="quiet@test"):
        result = add.delay(1, 1)
        assert result.get(timeout=10) == 2
    wait_for(lambda: any(item["type"] == "worker-offline" for item in seen), 10)
    assert not any(item["type"].startswith("task-") for item in seen)
    assert "quiet@test" in state.workers


def test_task_sent_event_from_the_client(app: Celeriac, captured: tuple[State, list[dict[str, Any]]]) -> None:
    state, _ = captured
    app.conf.update({"task_send_sent_event": True})
    result = app.send_task("some.task", [1, 2], {"k": "v"}, queue="elsewhere")
    wait_for(lambda: result.id in state.tasks, 10)
    task = state.tasks[result.id]
    assert (task.state, task.name, task.args, task.kwargs, task.queue) == (
        "PENDING",
        "some.task",
        "[1, 2]",
        "{'k': 'v'}",
        "elsewhere",
    )
    assert task.sent is not None and task.worker is None


def test_state_is_bounded_and_orders_by_time() -> None:
    state = State(max_tasks_in_memory=3, max_workers_in_memory=2)
    for number in range(5):
        state.event(event("task-received", uuid=f"t{number}", name="n", hostname=f"w{number}", timestamp=number))
    assert list(state.tasks) == ["t2", "t3", "t4"]
    assert state.task_count == 5 and state.event_count == 5
    assert [task.uuid for task in state.tasks_by_time()] == ["t4", "t3", "t2"]
    assert [task.uuid for task in state.tasks_by_time(limit=1)] == ["t4"]
    assert len(state.workers) <= 2
    assert state.tasks_by_worker("w4")[0].uuid == "t4"
    assert [task.uuid for task in state.tasks_by_type("n", limit=2)] == ["t4", "t3"]


def test_state_keeps_final_states_against_late_events() -> None:
    state = State()
    now = time.time()
    state.event(event("task-succeeded", uuid="a", result="1", hostname="w", timestamp=now + 1))
    state.event(event("task-started", uuid="a", hostname="w", timestamp=now))  # arrives late
    task = state.tasks["a"]
    assert task.state == "SUCCESS" and task.started == now and task.result == "1"
    state.event(event("task-received", uuid="b", hostname="w", timestamp=now))
    state.event(event("task-retried", uuid="b", hostname="w", timestamp=now + 1, exception="E()"))
    state.event(event("task-received", uuid="b", hostname="w2", timestamp=now + 2))
    assert (state.tasks["b"].state, state.tasks["b"].worker) == ("RECEIVED", "w2")
    state.event(event("task-received", uuid="c", parent_id="b", hostname="w", timestamp=now))
    assert state.tasks["b"].children == ["c"]
    assert state.tasks["c"].as_dict()["parent_id"] == "b"


def test_worker_alive_follows_heartbeats() -> None:
    state = State()
    now = time.time()
    state.event(event("worker-online", hostname="w", freq=2.0, local_received=now, active=0, processed=3))
    assert state.workers["w"].alive and state.workers["w"].processed == 3
    state.event(event("worker-heartbeat", hostname="old", freq=1.0, local_received=now - 10))
    assert not state.workers["old"].alive
    assert [w.hostname for w in state.alive_workers()] == ["w"]
    state.event(event("worker-offline", hostname="w", local_received=now))
    assert not state.workers["w"].alive
    assert state.workers["w"].as_dict()["alive"] is False


@pytest.mark.parametrize("size", [0, 1, 5, 1023, 1024, 1025, 5000])
def test_short_repr_equals_the_cut_full_repr(size: int) -> None:
    """Events and the worker's log line carry a cut repr; a huge value is cut before the repr."""
    from celeriac.worker._events import short_repr

    for value in (list(range(size)), tuple(range(size)), {i: i for i in range(size)}, "x" * size):
        full = repr(value)
        expected = full if len(full) <= 1024 else full[:1021] + "..."
        assert short_repr(value) == expected
