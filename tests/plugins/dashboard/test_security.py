"""Authentication, CSRF, read-only mode, the bind check, the Host check and secret masking."""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import celeriac
import pytest
from celeriac.exceptions import ConfigError
from celeriac.plugins.dashboard import DashboardConfig, create_app, hash_password
from celeriac.plugins.dashboard._api import mask_secrets
from celeriac.plugins.dashboard._security import check_bind, verify_password
from starlette.testclient import TestClient

TOKEN = "t" * 24
PASSWORD_HASH = hash_password("s3cret-pass")


@pytest.fixture
def make_client(app: celeriac.Celeriac) -> Iterator[object]:
    clients: list[TestClient] = []

    def make(**config: object) -> TestClient:
        web = create_app(app, DashboardConfig(**config), start_monitor=False)  # type: ignore[arg-type]
        client = TestClient(web, base_url="http://127.0.0.1")
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_mutating_requests_need_the_csrf_token_and_a_same_origin(make_client: object) -> None:
    client = make_client()  # type: ignore[operator]
    missing = client.post("/api/tasks/x/revoke", json={})
    assert missing.status_code == 403 and "CSRF" in missing.json()["error"]
    token = client.get("/api/csrf").json()["token"]
    wrong = client.post("/api/tasks/x/revoke", json={}, headers={"X-CSRF-Token": token + "x"})
    assert wrong.status_code == 403
    foreign = client.post(
        "/api/tasks/x/revoke", json={}, headers={"X-CSRF-Token": token, "Origin": "http://evil.example"}
    )
    assert foreign.status_code == 403 and "cross-origin" in foreign.json()["error"]
    page = client.get("/tasks")
    assert page.status_code == 200 and "celeriac_csrf" in client.cookies


def test_read_only_mode_refuses_every_action(make_client: object) -> None:
    client = make_client(read_only=True)  # type: ignore[operator]
    token = client.get("/api/csrf").json()["token"]
    refused = client.post("/api/tasks/send", json={"name": "x"}, headers={"X-CSRF-Token": token})
    assert refused.status_code == 403 and "read-only" in refused.json()["error"]
    assert client.get("/api/settings").json()["read_only"] is True


def test_basic_auth_with_a_scrypt_hash(make_client: object) -> None:
    client = make_client(username="admin", password_hash=PASSWORD_HASH)  # type: ignore[operator]
    denied = client.get("/api/workers")
    assert denied.status_code == 401 and denied.headers["www-authenticate"].startswith("Basic")
    assert client.get("/api/workers", headers=_basic("admin", "wrong")).status_code == 401
    assert client.get("/api/workers", headers=_basic("root", "s3cret-pass")).status_code == 401
    assert client.get("/api/workers", headers=_basic("admin", "s3cret-pass")).status_code == 200
    assert client.get("/healthz").status_code in {200, 503}  # public for probes
    settings = client.get("/api/settings", headers=_basic("admin", "s3cret-pass")).text
    assert PASSWORD_HASH not in settings and "s3cret" not in settings


def test_bearer_token_authenticates_and_is_exempt_from_csrf(make_client: object) -> None:
    client = make_client(token=TOKEN)  # type: ignore[operator]
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    sent = client.post("/api/workers/nobody/explode", json={}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert sent.status_code == 404  # past auth and CSRF: the action itself is unknown


def test_a_foreign_host_header_is_refused_on_loopback(make_client: object) -> None:
    client = make_client()  # type: ignore[operator]
    response = client.get("/api/workers", headers={"Host": "attacker.example"})
    assert response.status_code == 400 and "Host" in response.json()["error"]


def test_binding_beyond_loopback_needs_authentication() -> None:
    check_bind(DashboardConfig(host="127.0.0.1"))
    check_bind(DashboardConfig(host="::1"))
    with pytest.raises(ConfigError, match=r"refusing to listen on 0\.0\.0\.0 without authentication"):
        check_bind(DashboardConfig(host="0.0.0.0"))
    check_bind(DashboardConfig(host="0.0.0.0", token=TOKEN))
    check_bind(DashboardConfig(host="0.0.0.0", username="admin", password_hash=PASSWORD_HASH))
    with pytest.raises(ConfigError, match="at least 16"):
        check_bind(DashboardConfig(token="short"))
    with pytest.raises(ConfigError, match="not a scrypt hash"):
        check_bind(DashboardConfig(username="admin", password_hash="plain-text"))


def test_password_hashes_verify_and_differ_by_salt() -> None:
    assert verify_password("s3cret-pass", PASSWORD_HASH)
    assert not verify_password("other", PASSWORD_HASH)
    assert hash_password("s3cret-pass") != PASSWORD_HASH
    with pytest.raises(ConfigError, match="empty"):
        hash_password("")


def test_worker_config_secrets_are_masked() -> None:
    conf = {
        "broker_url": "redis://user:hunter2@host:6379/0",
        "security_sign_key": "k" * 32,
        "security_verify_keys": ["v" * 32],
        "dashboard_token": TOKEN,
        "worker_concurrency": 4,
        "result_store": "sqlite:///celeriac.db",
    }
    masked = mask_secrets(conf)
    text = repr(masked)
    assert "hunter2" not in text and "k" * 32 not in text and "v" * 32 not in text and TOKEN not in text
    assert masked["broker_url"] == "redis://user:****@host:6379/0"
    assert masked["worker_concurrency"] == 4 and masked["result_store"] == "sqlite:///celeriac.db"


def test_cli_refuses_a_public_bind_without_auth_in_one_line(tmp_path: Path) -> None:
    celeriac_script = str(Path(sys.executable).with_name("celeriac"))
    result = subprocess.run(
        [celeriac_script, "dashboard", "--host", "0.0.0.0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to listen on 0.0.0.0 without authentication" in lines[0], result.stderr
