"""A worker that requires signatures (and encryption), end to end on the memory broker."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from celeriac import Celeriac, Envelope, Task, TaskMessage
from celeriac.testing import start_worker, wait_for

pytestmark = pytest.mark.timeout(60)

KEY = "worker-key-" + "w" * 32
OLD_KEY = "old-client-key-" + "o" * 32
STRANGER_KEY = "stranger-key-" + "x" * 32
ENCRYPT_KEY = "encrypt-key-" + "e" * 32


def on_broker(name: str, **settings: Any) -> Celeriac:
    app = Celeriac(
        "tests",
        broker_url=f"memory://{name}",
        result_store=f"memory://{name}",
        environ={},
        set_as_current=False,
        **settings,
    )
    app.task(name="t.add")(lambda x, y: x + y)
    return app


def test_a_worker_requiring_signatures_dead_letters_unsigned_tampered_and_foreign_messages() -> None:
    name = uuid.uuid4().hex
    worker_app = on_broker(name, security_sign_key=KEY, security_verify_keys=[OLD_KEY])
    client = on_broker(name, security_sign_key=KEY)
    old_client = on_broker(name, security_sign_key=OLD_KEY)
    unsigned_client = on_broker(name)
    stranger = on_broker(name, security_sign_key=STRANGER_KEY)
    rejected: list[str] = []
    worker_app.on("task_rejected")(lambda exc: rejected.append(str(exc)))

    good = []
    bad = 0
    for i in range(20):
        good.append(client.send_task("t.add", [i, i]))
        good.append(old_client.send_task("t.add", [i, 1]))
        unsigned_client.send_task("t.add", [i, 0])
        stranger.send_task("t.add", [i, 0])
        tampered, _ = client.codec.encode(TaskMessage(id=f"tampered-{i}", task="t.add", args=[i, 2]), "json")
        tampered.body = tampered.body.replace(b"2]", b"3]")
        client.transport.publish(tampered, "default")
        replayed_as_other_id, _ = client.codec.encode(TaskMessage(id=f"orig-{i}", task="t.add", args=[i, 2]), "json")
        replayed_as_other_id.headers["id"] = f"other-{i}"
        client.transport.publish(replayed_as_other_id, "default")
        client.transport.publish(Envelope(b"\x00garbage", "application/json", headers={"task": "t.add"}), "default")
        bad += 5

    with start_worker(worker_app, pool="threads", concurrency=4):
        values = [result.get(timeout=20) for result in good]
        wait_for(lambda: len(rejected) == bad, timeout=20)
    assert values == [v for i in range(20) for v in (2 * i, i + 1)]
    reasons = sorted({reason.split(" (")[0].split(";")[0] for reason in rejected})
    assert reasons == [
        "message is not signed and this worker requires signatures",  # checked before anything else
        f"message signed with unknown key id '{stranger.codec.filters[-1].sign_key.id}'",  # type: ignore[attr-defined]
        "signature does not match",
    ]
    assert sum("signature does not match" in r for r in rejected) == 40  # tampered body, changed id
    assert sum("not signed" in r for r in rejected) == 40  # unsigned client, garbage
    dead = worker_app.transport.fetch(["default.dead-letter"], limit=200, timeout=1)
    assert len(dead) == bad
    assert all(d.envelope.headers["x-death-reason"] for d in dead)
    for app in (worker_app, client, old_client, unsigned_client, stranger):
        app.close()


def test_signed_and_encrypted_tasks_retry_and_wait_for_their_eta() -> None:
    """Retries are sent by the worker (signed and encrypted again, with no stale security
    headers); a countdown message is re-published as received and still verifies."""
    name = uuid.uuid4().hex
    settings = {
        "security_sign_key": KEY,
        "security_encrypt_key": ENCRYPT_KEY,
        "serializer": "msgpack",
        "compression": "zlib",
        "compression_threshold": 0,
    }
    app = on_broker(name, **settings)
    rejected: list[str] = []
    app.on("task_rejected")(lambda exc: rejected.append(str(exc)))
    seen_headers: list[dict[str, Any]] = []
    app.on("after_task_publish")(lambda headers: seen_headers.append(dict(headers)))

    @app.task(name="t.flaky", bind=True, max_retries=2, default_retry_delay=0)
    def flaky(self: Task[..., Any], value: bytes) -> tuple[bytes, int]:
        if self.request.retries < 2:
            raise self.retry()
        return value, self.request.retries

    with start_worker(app, pool="threads", concurrency=2):
        assert flaky.delay(b"secret").get(timeout=10) == (b"secret", 2)
        assert app.send_task("t.add", [2, 3], countdown=0.3).get(timeout=10) == 5
    assert rejected == []
    retries = [h for h in seen_headers if h["task"] == "t.flaky"]
    assert [h["retries"] for h in retries] == [0, 1, 2]
    assert all(h["x-celeriac-content-type"] == "application/x-msgpack" for h in retries)
    assert len({h["x-celeriac-signature"] for h in retries}) == 3
    app.close()


def test_rotating_the_sign_key_across_a_running_system() -> None:
    """Step 1: the new key is a verify key everywhere; step 2: it signs; step 3: the old goes."""
    name = uuid.uuid4().hex
    step1_worker = on_broker(name, security_sign_key=OLD_KEY, security_verify_keys=[KEY])
    step2_client = on_broker(name, security_sign_key=KEY, security_verify_keys=[OLD_KEY])
    step1_client = on_broker(name, security_sign_key=OLD_KEY)
    with start_worker(step1_worker, pool="solo"):
        assert step2_client.send_task("t.add", [1, 1]).get(timeout=10) == 2
        assert step1_client.send_task("t.add", [1, 2]).get(timeout=10) == 3
    step3_worker = on_broker(name, security_sign_key=KEY)
    rejected: list[str] = []
    step3_worker.on("task_rejected")(lambda exc: rejected.append(str(exc)))
    late = step1_client.send_task("t.add", [1, 3])
    with start_worker(step3_worker, pool="solo"):
        assert step2_client.send_task("t.add", [1, 4]).get(timeout=10) == 5
        wait_for(lambda: rejected)
    assert late.state == "PENDING"
    assert rejected[0].startswith("message signed with unknown key id")
