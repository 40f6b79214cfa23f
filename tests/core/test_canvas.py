"""The canvas: signatures, chain, group, chord, link/link_error, map/starmap/chunks.

Wire-shape tests use the in-memory broker without a worker; the rest run a real worker (threads
pool) on every backend in ``WORKFLOW_BACKENDS`` (tests/core/conftest.py), including a hypothesis
test that compares random canvases run by the worker with the same canvases run in-process.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from celeriac import (
    AsyncResult,
    Celeriac,
    ChordError,
    GroupResult,
    NotRegistered,
    Reject,
    Signature,
    TaskRevokedError,
    chain,
    chord,
    chunks,
    group,
    signature,
    states,
    xmap,
    xstarmap,
)
from celeriac.task import Request, Task
from celeriac.testing import start_worker, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.timeout(120)
TIMEOUT = 30


def flat(value: Any) -> int:
    """Numbers, or (nested) lists of numbers summed: every task accepts any task's result."""
    return value if isinstance(value, int) else sum(flat(item) for item in value)


@dataclass
class Tasks:
    add: Task[..., Any]
    mul: Task[..., Any]
    tsum: Task[..., Any]
    fail: Task[..., Any]
    record: Task[..., Any]
    recorded: list[Any]


def arithmetic(app: Celeriac) -> Tasks:
    recorded: list[Any] = []

    @app.task(name="wf.add")
    def add(x: Any, y: int = 0) -> int:
        return flat(x) + y

    @app.task(name="wf.mul")
    def mul(x: Any, y: int) -> int:
        return flat(x) * y

    @app.task(name="wf.tsum")
    def tsum(values: Any) -> int:
        return flat(values)

    @app.task(name="wf.fail")
    def fail(x: Any = 0) -> int:
        raise ValueError(f"fail {flat(x)}")

    @app.task(name="wf.record")
    def record(*args: Any) -> None:
        recorded.append(args)

    return Tasks(add, mul, tsum, fail, record, recorded)


def first_message(app: Celeriac, queue: str = "default") -> Any:
    [delivery] = app.transport.fetch([queue], limit=1, timeout=1)
    return app.codec.decode(delivery.envelope)


# -- signatures and the wire (no worker) ------------------------------------------------------


def test_a_signature_is_celerys_signature_dict(app: Celeriac) -> None:
    t = arithmetic(app)
    sig = t.add.s(2, y=3).set(queue="fast")
    assert sig == {
        "task": "wf.add",
        "args": [2],
        "kwargs": {"y": 3},
        "options": {"queue": "fast"},
        "subtask_type": None,
        "immutable": False,
    }
    assert isinstance(sig, dict)
    assert t.add.si(1, 2).immutable
    assert repr(t.add.si(1, 2)) == "%wf.add(1, 2)"
    assert sig.type is t.add
    assert t.add.s(y=3)(1) == 4  # called here, arguments merged
    copy = Signature.from_dict(sig.as_dict(), app)
    assert copy == sig
    assert copy is not sig


def test_sent_arguments_are_prepended_and_immutable_signatures_ignore_them(app: Celeriac) -> None:
    t = arithmetic(app)
    t.add.s(10).apply_async((1,))
    message = first_message(app)
    assert message.args == [1, 10]
    t.add.si(5, 5).apply_async((1,), {"y": 9})
    message = first_message(app)
    assert (message.args, message.kwargs) == ([5, 5], {})


def test_a_chain_travels_as_its_first_task_with_the_rest_reversed_in_embed(app: Celeriac) -> None:
    t = arithmetic(app)
    result = chain(t.add.s(1, 1), t.add.s(2), t.add.si(3, 3)).apply_async()
    message = first_message(app)
    assert message.task == "wf.add"
    assert message.args == [1, 1]
    rest = message.embed["chain"]
    assert [(step["task"], step["args"], step["immutable"]) for step in rest] == [
        ("wf.add", [3, 3], True),
        ("wf.add", [2], False),
    ]
    assert set(rest[0]) == {"task", "args", "kwargs", "options", "subtask_type", "immutable"}
    # the result is the last task's, linked back through its parents to the first message
    assert result.id == rest[0]["options"]["task_id"]
    assert result.parent is not None and result.parent.id == rest[1]["options"]["task_id"]
    assert result.parent.parent is not None and result.parent.parent.id == message.id
    assert message.embed["callbacks"] is None and message.embed["chord"] is None


def test_chord_header_messages_carry_body_group_and_index(app: Celeriac) -> None:
    t = arithmetic(app)
    result = chord([t.add.s(1, 1), t.add.s(2, 2)], t.tsum.s()).apply_async()
    deliveries = app.transport.fetch(["default"], limit=10, timeout=1)
    messages = sorted((app.codec.decode(d.envelope) for d in deliveries), key=lambda m: m.group_index or 0)
    assert [m.args for m in messages] == [[1, 1], [2, 2]]
    assert [m.group_index for m in messages] == [0, 1]
    assert isinstance(result.parent, GroupResult)
    assert {m.group for m in messages} == {result.parent.id}
    bodies = [m.embed["chord"] for m in messages]
    assert bodies[0] == bodies[1]
    assert bodies[0]["task"] == "wf.tsum"
    assert bodies[0]["options"]["task_id"] == result.id
    assert bodies[0]["options"]["chord_size"] == 2
    assert [r.id for r in result.parent.results] == [m.id for m in messages]


def test_link_and_link_error_become_callbacks_and_errbacks(app: Celeriac) -> None:
    t = arithmetic(app)
    t.add.apply_async((1, 1), link=t.add.s(5), link_error=t.record.s())
    message = first_message(app)
    assert [c["task"] for c in message.embed["callbacks"]] == ["wf.add"]
    assert [e["task"] for e in message.embed["errbacks"]] == ["wf.record"]


def test_composition_rules(app: Celeriac) -> None:
    t = arithmetic(app)
    a, b, c, d = t.add.s(1), t.add.s(2), t.add.s(3), t.add.s(4)
    flat_chain = a | (b | c) | d
    assert isinstance(flat_chain, chain)
    assert [s.args for s in flat_chain.tasks] == [(1,), (2,), (3,), (4,)]
    assert isinstance(group(a, b) | c, chord)
    upgraded = chain(a, group(b, c), d)
    assert [type(s) for s in upgraded.tasks] == [Signature, chord]
    assert isinstance(upgraded.tasks[1], chord) and upgraded.tasks[1].body == d
    assert len(group(group(a, b), c).tasks) == 3
    combined = a.chain(b, c)
    assert isinstance(combined, chain) and len(combined.tasks) == 3
    for canvas in (upgraded, group(a, chain(b, c)), chord([a, b], c), t.add.chunks([(1, 2)], 1)):
        copy = signature(canvas.as_dict(), app=app)
        assert type(copy) is type(canvas)
        assert copy.as_dict() == canvas.as_dict()


def test_a_group_has_no_callback(app: Celeriac) -> None:
    t = arithmetic(app)
    with pytest.raises(TypeError, match="use chord"):
        group(t.add.s(1)).link(t.add.s(2))
    with pytest.raises(TypeError, match="use chord"):
        group(t.add.s(1)).apply_async(link=t.add.s(2))


def test_unknown_apply_async_options_are_refused(app: Celeriac) -> None:
    t = arithmetic(app)
    with pytest.raises(TypeError, match="cuntdown"):
        t.add.s(1, 2).apply_async(cuntdown=3)


# -- on a worker -----------------------------------------------------------------------------


def test_chain_result_and_its_parents(workflow_app: Celeriac) -> None:
    t = arithmetic(workflow_app)
    with start_worker(workflow_app, concurrency=4):
        result = (t.add.s(1, 1) | t.add.s(2) | t.mul.s(10)).delay()
        assert result.get(timeout=TIMEOUT) == 40
        assert result.parent is not None and result.parent.get(timeout=TIMEOUT) == 4
        assert result.parent.parent is not None and result.parent.parent.get(timeout=TIMEOUT) == 2
        assert result.parent.parent.parent is None


def test_group_result(workflow_app: Celeriac) -> None:
    t = arithmetic(workflow_app)
    with start_worker(workflow_app, concurrency=4):
        result = group(t.add.s(i, i) for i in range(6)).delay()
        assert isinstance(result, GroupResult)
        assert result.get(timeout=TIMEOUT) == [0, 2, 4, 6, 8, 10]
        assert result.completed_count() == 6
        assert result.ready() and result.successful() and not result.failed()
        result.save()
        restored = GroupResult.restore(result.id, workflow_app)
        assert restored is not None
        assert [r.id for r in restored.results] == [r.id for r in result.results]
        assert restored.get(timeout=TIMEOUT) == [0, 2, 4, 6, 8, 10]
        partial = group(t.add.s(1, 1), t.fail.s()).delay()
        with pytest.raises(ValueError, match="fail 0"):
            partial.get(timeout=TIMEOUT)
        assert partial.completed_count() == 1
        assert partial.failed()
    assert GroupResult.restore("no-such-group", workflow_app) is None


def test_chord_body_gets_header_results_in_header_order(workflow_app: Celeriac) -> None:
    size = 4
    finished: list[int] = []
    turn = threading.Condition()

    @workflow_app.task(name="wf.in_reverse")
    def in_reverse(i: int) -> int:
        with turn:  # member i finishes only after every member after it: reverse order
            assert turn.wait_for(lambda: len(finished) == size - 1 - i, timeout=20)
            finished.append(i)
            turn.notify_all()
        return i * 10

    @workflow_app.task(name="wf.identity")
    def identity(values: list[int]) -> list[int]:
        return values

    with start_worker(workflow_app, concurrency=size):
        result = chord([in_reverse.s(i) for i in range(size)], identity.s()).delay()
        assert result.get(timeout=TIMEOUT) == [0, 10, 20, 30]
    assert finished == [3, 2, 1, 0]


def nested_canvases(t: Tasks) -> list[tuple[str, Signature, Any]]:
    return [
        ("group in chain", t.add.s(1, 1) | group(t.add.s(1), t.add.s(2)) | t.tsum.s(), 7),
        ("group at the end of a chain", t.add.s(1, 1) | group(t.add.s(1), t.mul.s(3)), [3, 6]),
        ("chord in chain", t.add.s(1, 1) | chord([t.add.s(1), t.add.s(2)], t.tsum.s()) | t.mul.s(10), 70),
        ("chain in group", group(t.add.s(1, 1) | t.add.s(1), t.add.si(5, 5) | t.mul.s(2)), [3, 20]),
        (
            "chord whose header has chains",
            chord([t.add.s(1, 1) | t.mul.s(3), t.add.si(2, 2), t.add.s(0, 1) | t.add.s(1) | t.add.s(1)], t.tsum.s()),
            13,
        ),
        (
            "chord whose header chain ends in a group",
            chord([t.add.s(1, 1) | group(t.add.s(1), t.add.s(2)), t.add.si(5, 5)], signature("celery.accumulate")),
            [[[3, 4], 10]],
        ),
        (
            "chord in chord header",
            chord([chord([t.add.s(1, 1), t.add.s(2, 2)], t.tsum.s()), t.add.si(1, 0)], t.tsum.s()),
            7,
        ),
        ("chord with a chain body", chord([t.add.s(1, 1), t.add.s(2, 2)], t.tsum.s() | t.mul.s(2)), 12),
        ("chord with a group body", chord([t.add.s(1, 1), t.add.s(2, 2)], group(t.tsum.s(), t.mul.s(2))), [6, 12]),
        ("chord body group then a task", chord([t.add.s(1, 1)], group(t.add.s(1), t.add.s(2))) | t.tsum.s(), 7),
        ("group in group", group(group(t.add.s(1, 1), t.add.s(2, 2)), t.add.s(3, 3)), [2, 4, 6]),
        ("empty chord header", chord([], t.tsum.s()), 0),
    ]


def test_nested_canvases(workflow_app: Celeriac) -> None:
    t = arithmetic(workflow_app)
    with start_worker(workflow_app, concurrency=4):
        sent = [(label, canvas.delay(), expected) for label, canvas, expected in nested_canvases(t)]
        got = {label: result.get(timeout=TIMEOUT) for label, result, _ in sent}
    assert got == {label: expected for label, _, expected in sent}


def test_nested_canvases_in_process_give_the_same_results(app: Celeriac) -> None:
    t = arithmetic(app)
    got = {label: canvas.apply().get() for label, canvas, _ in nested_canvases(t)}
    assert got == {label: expected for label, _, expected in nested_canvases(t)}


def test_always_eager_runs_canvases_in_process(app: Celeriac) -> None:
    app.conf.update({"task_always_eager": True})
    t = arithmetic(app)
    for label, canvas, expected in nested_canvases(t):
        assert canvas.apply_async().get() == expected, label
    t.add.apply_async((1, 1), link=t.record.s())
    assert t.recorded == [(2,)]
    assert app.transport.queue_length("default") == 0


def test_link_callbacks_get_the_result_and_immutable_ones_do_not(workflow_app: Celeriac) -> None:
    t = arithmetic(workflow_app)
    with start_worker(workflow_app, concurrency=2):
        first = t.add.s(2, 3)
        callback = first.link(t.record.s("with result"))
        first.link(t.record.si("immutable"))
        parent = first.delay()
        assert parent.get(timeout=TIMEOUT) == 5
        wait_for(lambda: len(t.recorded) == 2, timeout=TIMEOUT)
    assert set(t.recorded) == {(5, "with result"), ("immutable",)}
    assert callback.task == "wf.record"


def test_a_failing_chain_raises_the_first_error_with_its_type(workflow_app: Celeriac) -> None:
    t = arithmetic(workflow_app)
    with start_worker(workflow_app, concurrency=2):
        result = (t.add.s(1, 1) | t.fail.s() | t.add.s(1) | t.mul.s(2)).delay()
        with pytest.raises(ValueError, match="fail 2"):
            result.get(timeout=TIMEOUT)
        # the rest of the chain never ran; it is marked failed, so nothing waits forever
        assert result.state == states.FAILURE
        assert result.parent is not None and result.parent.state == states.FAILURE
        assert workflow_app.AsyncResult(result.id).get(timeout=1, propagate=False).args == ("fail 2",)
        in_group = group(t.add.s(1, 1) | t.fail.s() | t.add.s(1), t.add.s(1, 1)).delay()
        with pytest.raises(ValueError, match="fail 2"):
            in_group.get(timeout=TIMEOUT)


def test_a_failing_header_fails_the_body_with_chord_error_and_errbacks_run_once(workflow_app: Celeriac) -> None:
    t = arithmetic(workflow_app)
    calls: list[tuple[str, str, str]] = []

    @workflow_app.task(name="wf.on_error")
    def on_error(request: Request, exc: BaseException, traceback: str | None) -> None:
        calls.append((request.id, type(exc).__name__, str(exc)))

    body = t.tsum.s()
    body.link_error(on_error.s())
    canvas = chord([t.add.s(1, 1), t.fail.s(1), t.add.s(2, 2), t.fail.s(2)], body)
    with start_worker(workflow_app, concurrency=4):
        result = canvas.delay()
        assert isinstance(result.parent, GroupResult)
        failed_ids = {result.parent.results[1].id, result.parent.results[3].id}
        with pytest.raises(ValueError, match="fail [12]"):  # the first error, with its own type
            result.get(timeout=TIMEOUT)
        with pytest.raises(ChordError, match="Dependency .* raised ValueError") as raised:
            workflow_app.AsyncResult(result.id).get(timeout=TIMEOUT)
        assert any(task_id in str(raised.value) for task_id in failed_ids)
        wait_for(lambda: result.parent is not None and result.parent.ready(), timeout=TIMEOUT)
    assert len(calls) == 1  # both failures are settled (the worker stopped): the body failed once
    assert calls[0][0] == result.id
    assert calls[0][1] == "ChordError"


def test_errback_arities(workflow_app: Celeriac) -> None:
    t = arithmetic(workflow_app)
    new_style: list[tuple[str, str, bool]] = []
    old_style: list[tuple[str, str, str]] = []

    @workflow_app.task(name="wf.errback_new")
    def errback_new(request: Request, exc: BaseException, traceback: str | None) -> None:
        new_style.append((request.id, repr(exc), "ValueError" in (traceback or "")))

    @workflow_app.task(name="wf.errback_old")
    def errback_old(task_id: str, label: str) -> None:
        old_style.append((task_id, label, workflow_app.AsyncResult(task_id).state))

    with start_worker(workflow_app, concurrency=2):
        failing = t.fail.s(7)
        failing.link_error(errback_new.s())
        failing.link_error(errback_old.s("old style"))
        result = failing.delay()
        with pytest.raises(ValueError, match="fail 7"):
            result.get(timeout=TIMEOUT)
        wait_for(lambda: new_style and old_style, timeout=TIMEOUT)
    assert new_style == [(result.id, "ValueError('fail 7')", True)]
    assert old_style == [(result.id, "old style", states.FAILURE)]  # the failure was stored first


def test_a_revoked_header_task_fails_the_chord(workflow_app: Celeriac) -> None:
    t = arithmetic(workflow_app)
    canvas = chord([t.add.s(1, 1), t.add.s(2, 2)], t.tsum.s())
    result = canvas.freeze()
    assert isinstance(result.parent, GroupResult)
    revoked_id = result.parent.results[1].id
    with start_worker(workflow_app, concurrency=2) as worker:
        worker.revoke(revoked_id)
        sent = canvas.delay()
        assert sent.id == result.id
        with pytest.raises(TaskRevokedError):  # the first problem: the revoked header task
            sent.get(timeout=TIMEOUT)
        with pytest.raises(ChordError, match=f"Dependency {revoked_id} was revoked"):
            workflow_app.AsyncResult(sent.id).get(timeout=TIMEOUT)


def test_an_expired_header_task_fails_the_chord(workflow_app: Celeriac) -> None:
    t = arithmetic(workflow_app)
    with start_worker(workflow_app, concurrency=2):
        result = chord([t.add.s(1, 1), t.add.s(2, 2).set(expires=-1)], t.tsum.s()).delay()
        with pytest.raises(ChordError, match="was expired"):
            workflow_app.AsyncResult(result.id).get(timeout=TIMEOUT)


def test_a_dead_lettered_header_task_fails_the_chord(workflow_app: Celeriac) -> None:
    t = arithmetic(workflow_app)

    @workflow_app.task(name="wf.poison")
    def poison() -> int:
        return 1

    @workflow_app.on("before_task_publish")
    def corrupt(sender: str, headers: dict[str, Any]) -> None:
        if sender == "wf.poison":  # a compression no worker can undo: the message cannot be decoded
            headers["compression"] = "application/x-nothing"

    with start_worker(workflow_app, concurrency=2):
        missing = signature("wf.no_such_task", (1,), app=workflow_app)
        unknown = chord([t.add.s(1, 1), missing], t.tsum.s()).delay()
        with pytest.raises(NotRegistered):
            unknown.get(timeout=TIMEOUT)
        with pytest.raises(ChordError, match="raised NotRegistered"):
            workflow_app.AsyncResult(unknown.id).get(timeout=TIMEOUT)
        undecodable = chord([t.add.s(1, 1), poison.si()], t.tsum.s()).delay()
        with pytest.raises(ChordError, match="was dead-lettered: message compressed with"):
            undecodable.get(timeout=TIMEOUT)


def test_a_header_task_that_rejects_its_message_fails_the_chord(workflow_app: Celeriac) -> None:
    t = arithmetic(workflow_app)

    @workflow_app.task(name="wf.refuse")
    def refuse() -> None:
        raise Reject("poison pill", requeue=False)

    with start_worker(workflow_app, concurrency=2):
        result = chord([t.add.s(1, 1), refuse.si()], t.tsum.s()).delay()
        with pytest.raises(ChordError, match="was rejected: poison pill"):
            result.get(timeout=TIMEOUT)
        wait_for(lambda: workflow_app.transport.queue_length("default.dead-letter") == 1, timeout=TIMEOUT)


def test_a_step_that_expired_ends_its_chain_instead_of_leaving_it_pending(workflow_app: Celeriac) -> None:
    t = arithmetic(workflow_app)
    with start_worker(workflow_app, concurrency=2):
        result = (t.add.s(1, 1) | t.add.s(2).set(expires=-1) | t.mul.s(3)).delay()
        with pytest.raises(TaskRevokedError, match="expired"):
            result.get(timeout=TIMEOUT)
        assert result.state == states.REVOKED
        assert result.parent is not None and result.parent.state == states.REVOKED
        assert result.parent.parent is not None and result.parent.parent.get(timeout=TIMEOUT) == 2


def test_a_chord_that_takes_too_long_times_out(workflow_app: Celeriac) -> None:
    t = arithmetic(workflow_app)
    release = threading.Event()

    @workflow_app.task(name="wf.stuck")
    def stuck() -> int:
        release.wait(20)
        return 1

    with start_worker(workflow_app, concurrency=2):
        try:
            result = chord([t.add.s(1, 1), stuck.si()], t.tsum.s(), chord_timeout=0.5).delay()
            with pytest.raises(ChordError, match="timed out after 0.5s waiting for 1 of 2 header tasks"):
                result.get(timeout=TIMEOUT)
        finally:
            release.set()
        assert result.parent is not None
        assert result.parent.get(timeout=TIMEOUT) == [2, 1]
        assert result.state == states.FAILURE  # finishing late does not run the body after all


def test_a_header_task_counted_twice_does_not_run_the_body_early(workflow_app: Celeriac) -> None:
    """At-least-once delivery can count a header task twice; the body waits for the results."""
    from celeriac import _workflow

    t = arithmetic(workflow_app)
    release = threading.Event()
    bodies: list[Any] = []

    @workflow_app.task(name="wf.gated")
    def gated() -> int:
        release.wait(20)
        return 5

    @workflow_app.task(name="wf.body")
    def body(values: list[int]) -> list[int]:
        bodies.append(values)
        return values

    received: list[Request] = []
    workflow_app.on("task_received")(lambda request: received.append(request))
    with start_worker(workflow_app, concurrency=2):
        try:
            result = chord([t.add.s(1, 1), gated.si()], body.s()).delay()
            assert isinstance(result.parent, GroupResult)
            first = result.parent.results[0]
            assert first.get(timeout=TIMEOUT) == 2
            wait_for(lambda: any(r.id == first.id for r in received), timeout=TIMEOUT)
            duplicate = next(r for r in received if r.id == first.id)
            _workflow.after_settled(workflow_app, duplicate, states.SUCCESS, 2)  # a redelivery's count
            assert result.state == states.PENDING
        finally:
            release.set()
        assert result.get(timeout=TIMEOUT) == [2, 5]
        _workflow.after_settled(workflow_app, duplicate, states.SUCCESS, 2)  # and one more, late
    assert bodies == [[2, 5]]


def test_map_starmap_and_chunks(workflow_app: Celeriac) -> None:
    t = arithmetic(workflow_app)
    with start_worker(workflow_app, concurrency=2):
        assert isinstance(t.add.map([1, 2, 3]), xmap)
        assert t.add.map([1, 2, 3]).delay().get(timeout=TIMEOUT) == [1, 2, 3]
        assert isinstance(t.add.starmap([(1, 1)]), xstarmap)
        assert t.add.starmap([(1, 1), (2, 2)]).delay().get(timeout=TIMEOUT) == [2, 4]
        parts = t.add.chunks([(i, i) for i in range(5)], 2)
        assert isinstance(parts, chunks)
        assert parts.delay().get(timeout=TIMEOUT) == [[0, 2], [4, 6], [8]]
        assert (t.add.chunks([(1, 1), (2, 2)], 1) | t.tsum.s()).delay().get(timeout=TIMEOUT) == 6
    assert t.add.starmap([(1, 2)]).apply().get() == [3]


def test_retries_inside_workflows_keep_their_place(workflow_app: Celeriac) -> None:
    t = arithmetic(workflow_app)
    attempts: list[int] = []

    @workflow_app.task(name="wf.flaky", bind=True, max_retries=3)
    def flaky(self: Task[..., Any], x: Any) -> int:
        attempts.append(self.request.retries)
        if self.request.retries < 2:
            raise self.retry(countdown=0.01)
        return flat(x)

    with start_worker(workflow_app, concurrency=2):
        in_chain = (t.add.s(1, 1) | flaky.s() | t.mul.s(10)).delay()
        assert in_chain.get(timeout=TIMEOUT) == 20
        in_chord = chord([flaky.s(3), t.add.s(1, 1)], t.tsum.s()).delay()
        assert in_chord.get(timeout=TIMEOUT) == 5
    assert sorted(attempts) == [0, 0, 1, 1, 2, 2]


# -- random canvases: the worker agrees with the same canvas run in-process -----------------------

Node = tuple[Any, ...]


def _leaves() -> st.SearchStrategy[Node]:
    """A task signature; about one in ten fails."""
    kinds = st.sampled_from(["add"] * 3 + ["mul"] * 2 + ["addi"] * 2 + ["tsum"] * 2 + ["fail"])
    return st.tuples(kinds, st.integers(0, 5), st.integers(0, 5))


def _canvases(depth: int) -> st.SearchStrategy[Node]:
    """Chains, groups and chords nested up to ``depth`` levels (three in four nodes are)."""
    if depth == 0:
        return _leaves()
    child = _canvases(depth - 1)
    workflow = st.one_of(
        st.tuples(st.just("chain"), st.lists(child, min_size=1, max_size=3)),
        st.tuples(st.just("group"), st.lists(child, min_size=1, max_size=3)),
        st.tuples(st.just("chord"), st.lists(child, min_size=1, max_size=3), child),
    )
    return st.one_of(workflow, workflow, workflow, _leaves())


def build(node: Node, t: Tasks) -> Signature:
    kind = node[0]
    if kind == "add":
        return t.add.s(node[1])
    if kind == "mul":
        return t.mul.s(node[1] % 3 + 1)
    if kind == "addi":
        return t.add.si(node[1], node[2])
    if kind == "tsum":
        return t.tsum.s()
    if kind == "fail":
        return t.fail.s()
    if kind == "chain":
        return chain(*(build(child, t) for child in node[1]))
    if kind == "group":
        return group(build(child, t) for child in node[1])
    return chord([build(child, t) for child in node[1]], build(node[2], t))


def count_failures(node: Node) -> int:
    if node[0] == "fail":
        return 1
    if node[0] in ("chain", "group"):
        return sum(count_failures(child) for child in node[1])
    if node[0] == "chord":
        return sum(count_failures(child) for child in node[1]) + count_failures(node[2])
    return 0


def outcome(run: Any, exact_errors: bool) -> tuple[str, Any]:
    """The value, or the error: its type, and its message when only one task can fail (with
    several, which one fails first on a worker depends on timing)."""
    try:
        return "value", run()
    except Exception as exc:
        return "error", (type(exc).__name__, str(exc) if exact_errors else "")


def test_random_canvases_run_on_a_worker_as_they_run_in_process(workflow_app: Celeriac) -> None:
    t = arithmetic(workflow_app)
    with start_worker(workflow_app, concurrency=4):

        @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
        @given(node=_canvases(3), seed=st.integers(0, 9))
        def check(node: Node, seed: int) -> None:
            exact = count_failures(node) <= 1
            local = outcome(lambda: build(node, t).apply((seed,)).get(), exact)
            remote = outcome(lambda: build(node, t).apply_async((seed,)).get(timeout=TIMEOUT), exact)
            assert remote == local, node

        check()


def test_results_link_back_and_round_trip_as_tuples(app: Celeriac) -> None:
    t = arithmetic(app)
    result = (t.add.s(1, 1) | chord([t.add.s(1), t.add.s(2)], t.tsum.s())).freeze()
    header = result.parent
    assert isinstance(header, GroupResult) and len(header) == 2
    assert header.parent is not None and header.parent.parent is None
    from celeriac.result import result_from_tuple

    copy = result_from_tuple(result.as_tuple(), app)
    assert copy.id == result.id
    assert isinstance(copy.parent, GroupResult) and [r.id for r in copy.parent] == [r.id for r in header]
    assert copy.parent.parent is not None and copy.parent.parent.id == header.parent.id
    assert isinstance(AsyncResult(str(uuid.uuid4()), app).as_tuple(), tuple)
