"""HMAC signing: the wire format, tampering, key ids and rotation, settings from file and env."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from pathlib import Path
from typing import Any

import celeriac
import pytest
from celeriac import Celeriac, DecodeError, Envelope, TaskMessage
from celeriac.plugins import security
from celeriac.plugins.security import key_id

pytestmark = pytest.mark.timeout(60)

KEY = "k3y-0ne-" + "a" * 32
OLD_KEY = "k3y-old-" + "b" * 32
OTHER_KEY = "k3y-other-" + "c" * 32


def make_app(**settings: Any) -> Celeriac:
    return Celeriac("tests", environ={}, set_as_current=False, **settings)


def signed_envelope(app: Celeriac, **fields: Any) -> Envelope:
    message = TaskMessage(**{"id": "id-1", "task": "t.add", "args": [1, 2], **fields})
    envelope, _ = app.codec.encode(message, app.conf.serializer)
    return envelope


def copy(envelope: Envelope) -> Envelope:
    return Envelope(
        envelope.body,
        envelope.content_type,
        envelope.content_encoding,
        json.loads(json.dumps(envelope.headers)),
        dict(envelope.properties),
    )


# -- wire format ------------------------------------------------------------------------------


def test_signed_messages_carry_key_id_and_signature_and_decode() -> None:
    app = make_app(security_sign_key=KEY)
    envelope = signed_envelope(app)
    assert envelope.headers["x-celeriac-signature-key"] == key_id(KEY.encode()) == app_key_id(KEY)
    assert re.fullmatch(r"hmac-sha256:[A-Za-z0-9_-]{43}", envelope.headers["x-celeriac-signature"])
    message = app.codec.decode(envelope)
    assert (message.task, message.args) == ("t.add", [1, 2])
    assert "x-celeriac-signature" not in message.extra_headers
    assert "x-celeriac-signature-key" not in message.extra_headers


def app_key_id(key: str) -> str:
    return hashlib.sha256(b"celeriac-key-id\x00" + key.encode()).hexdigest()[:16]


SIGNED = [
    "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries", "timelimit",
    "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result", "replaced_task_nesting",
    "compression", "x-celeriac-encryption", "x-celeriac-encryption-key", "x-celeriac-content-type",
    "x-celeriac-content-encoding", "x-celeriac-signature-key",
]  # fmt: skip


def test_signature_is_the_documented_hmac() -> None:
    """Recompute the MAC from the module docstring's description, independently of the code."""
    app = make_app(security_sign_key=KEY, compression="zlib", compression_threshold=0)
    envelope = signed_envelope(app, reply_to="replies")
    metadata = {
        "content_encoding": envelope.content_encoding,
        "content_type": envelope.content_type,
        "headers": {name: envelope.headers.get(name) for name in SIGNED},
        "reply_to": "replies",
    }
    text = json.dumps(metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    mac = hmac.new(KEY.encode(), b"celeriac-signature-v1\n" + text + b"\n" + envelope.body, hashlib.sha256).digest()
    expected = "hmac-sha256:" + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    assert envelope.headers["x-celeriac-signature"] == expected


# -- tampering --------------------------------------------------------------------------------


def _flip_body(envelope: Envelope) -> None:
    envelope.body = envelope.body.replace(b"[1,2]", b"[1,3]")


TAMPERING = {
    "body (arguments)": _flip_body,
    "content type": lambda e: setattr(e, "content_type", "application/x-msgpack"),
    "content encoding": lambda e: setattr(e, "content_encoding", "binary"),
    "task": lambda e: e.headers.update(task="t.delete_everything"),
    "id": lambda e: e.headers.update(id="id-2"),
    "eta": lambda e: e.headers.update(eta="2030-01-01T00:00:00+00:00"),
    "expires": lambda e: e.headers.update(expires="2030-01-01T00:00:00+00:00"),
    "retries": lambda e: e.headers.update(retries=5),
    "timelimit": lambda e: e.headers.update(timelimit=[1, None]),
    "root_id": lambda e: e.headers.update(root_id="other"),
    "parent_id": lambda e: e.headers.update(parent_id="other"),
    "group": lambda e: e.headers.update(group="g"),
    "shadow": lambda e: e.headers.update(shadow="x"),
    "ignore_result": lambda e: e.headers.update(ignore_result=True),
    "compression added": lambda e: e.headers.update(compression="application/x-gzip"),
    "task removed": lambda e: e.headers.pop("task"),
    "reply_to": lambda e: e.properties.update(reply_to="attacker"),
}


@pytest.mark.parametrize("tamper", TAMPERING.values(), ids=TAMPERING.keys())
def test_any_change_to_what_is_signed_is_rejected(tamper: Any) -> None:
    app = make_app(security_sign_key=KEY)
    envelope = copy(signed_envelope(app))
    tamper(envelope)
    with pytest.raises(DecodeError, match=r"^signature does not match \(key id [0-9a-f]{16}\): message changed"):
        app.codec.decode(envelope)


def test_unsigned_headers_and_missing_null_headers_do_not_break_the_signature() -> None:
    app = make_app(security_sign_key=KEY)
    envelope = copy(signed_envelope(app))
    envelope.headers["x-trace-id"] = "added by a proxy"
    envelope.headers["x-death-reason"] = "broker bookkeeping"
    envelope.properties["priority"] = 9
    del envelope.headers["eta"]  # null and missing are the same to the worker
    assert app.codec.decode(envelope).extra_headers["x-trace-id"] == "added by a proxy"


def test_decoding_does_not_change_the_received_envelope() -> None:
    app = make_app(security_sign_key=KEY)
    envelope = signed_envelope(app)
    before = copy(envelope)
    app.codec.decode(envelope)
    assert (envelope.headers, envelope.body) == (before.headers, before.body)


# -- what is rejected and why -----------------------------------------------------------------


def test_unsigned_messages_are_rejected_when_required() -> None:
    worker = make_app(security_sign_key=KEY)
    unsigned = signed_envelope(make_app())
    with pytest.raises(DecodeError, match=r"^message is not signed and this worker requires signatures"):
        worker.codec.decode(unsigned)


def test_unsigned_messages_pass_while_rolling_out() -> None:
    worker = make_app(security_sign_key=KEY, security_require_signature=False)
    assert worker.codec.decode(signed_envelope(make_app())).args == [1, 2]
    tampered = copy(signed_envelope(worker))
    _flip_body(tampered)
    with pytest.raises(DecodeError, match="signature does not match"):  # signed ones are still checked
        worker.codec.decode(tampered)


def test_unknown_key_ids_are_rejected_naming_the_setting() -> None:
    worker = make_app(security_sign_key=KEY)
    foreign = signed_envelope(make_app(security_sign_key=OTHER_KEY))
    with pytest.raises(DecodeError, match=rf"^message signed with unknown key id '{key_id(OTHER_KEY.encode())}'; "):
        worker.codec.decode(foreign)
    swapped = copy(signed_envelope(worker))
    swapped.headers["x-celeriac-signature-key"] = "0" * 16
    with pytest.raises(DecodeError, match=r"\[celeriac.security\] verify_keys"):
        worker.codec.decode(swapped)


@pytest.mark.parametrize("value", [42, "sha1:abc", "hmac-sha256:***", ["hmac-sha256:x"]])
def test_malformed_signature_headers_are_rejected(value: Any) -> None:
    app = make_app(security_sign_key=KEY)
    envelope = copy(signed_envelope(app))
    envelope.headers["x-celeriac-signature"] = value
    with pytest.raises(DecodeError) as info:
        app.codec.decode(envelope)
    assert "\n" not in str(info.value)
    assert "signature" in str(info.value)


def test_a_signature_with_a_stale_header_from_a_received_message_is_replaced() -> None:
    app = make_app(security_sign_key=KEY)
    envelope = signed_envelope(
        app, extra_headers={"x-celeriac-signature": "hmac-sha256:stale", "x-celeriac-signature-key": "stale"}
    )
    assert envelope.headers["x-celeriac-signature-key"] == key_id(KEY.encode())
    assert app.codec.decode(envelope).args == [1, 2]


# -- rotation ---------------------------------------------------------------------------------


def test_key_rotation_old_and_new_keys_verify_others_do_not() -> None:
    old_client = make_app(security_sign_key=OLD_KEY)
    new_client = make_app(security_sign_key=KEY)
    worker = make_app(security_sign_key=KEY, security_verify_keys=[OLD_KEY])
    assert worker.codec.decode(signed_envelope(old_client)).args == [1, 2]
    assert worker.codec.decode(signed_envelope(new_client)).args == [1, 2]
    with pytest.raises(DecodeError, match="unknown key id"):
        worker.codec.decode(signed_envelope(make_app(security_sign_key=OTHER_KEY)))
    verify_only = make_app(security_verify_keys=[OLD_KEY, KEY])
    assert verify_only.codec.decode(signed_envelope(new_client)).args == [1, 2]
    unsigned, _ = verify_only.codec.encode(TaskMessage(id="1", task="t"), "json")
    assert "x-celeriac-signature" not in unsigned.headers  # no sign key: sends unsigned


# -- settings ---------------------------------------------------------------------------------


def test_settings_are_declared_in_the_security_section_with_secrets_marked() -> None:
    declared = {s.name: s for s in security.celeriac_settings()}
    assert set(declared) == {
        "security_sign_key",
        "security_verify_keys",
        "security_require_signature",
        "security_encrypt_key",
        "security_decrypt_keys",
        "security_require_encryption",
    }
    assert all(s.section == "security" for s in declared.values())
    assert {n for n, s in declared.items() if s.secret} == {
        "security_sign_key",
        "security_verify_keys",
        "security_encrypt_key",
        "security_decrypt_keys",
    }


def test_signing_is_one_config_block(tmp_path: Path) -> None:
    path = tmp_path / "signing.toml"  # not ./celeriac.toml: the unsigned app below must not read it
    path.write_text(f'[celeriac]\nserializer = "msgpack"\n\n[celeriac.security]\nsign_key = "{KEY}"\n')
    app = Celeriac.from_config(path, environ={}, set_as_current=False)
    envelope = signed_envelope(app)
    assert envelope.headers["x-celeriac-signature-key"] == key_id(KEY.encode())
    with pytest.raises(DecodeError, match="not signed"):
        app.codec.decode(signed_envelope(make_app(serializer="msgpack")))


def test_keys_from_environment_variables() -> None:
    environ = {"CELERIAC_SECURITY_SIGN_KEY": KEY, "CELERIAC_SECURITY_VERIFY_KEYS": f"{OLD_KEY},{OTHER_KEY}"}
    app = Celeriac("tests", environ=environ, set_as_current=False)
    assert app.conf.security_verify_keys == [OLD_KEY, OTHER_KEY]
    assert app.conf.origin("security_sign_key") == "$CELERIAC_SECURITY_SIGN_KEY"
    assert app.codec.decode(signed_envelope(make_app(security_sign_key=OTHER_KEY))).args == [1, 2]
    assert signed_envelope(app).headers["x-celeriac-signature-key"] == key_id(KEY.encode())


def test_a_short_key_stops_the_app_with_one_line_naming_the_key_not_its_value(tmp_path: Path) -> None:
    path = tmp_path / "celeriac.toml"
    path.write_text('[celeriac.security]\nverify_keys = ["tooshort-secret"]\n')
    with pytest.raises(celeriac.ConfigError) as info:
        Celeriac.from_config(path, environ={}, set_as_current=False)
    message = str(info.value)
    assert message.startswith(f"{path}: [celeriac.security] verify_keys: key too short (15 characters); ")
    assert "tooshort-secret" not in message
    assert "\n" not in message


@pytest.mark.parametrize("setting", ["security_require_signature", "security_require_encryption"])
def test_requiring_without_a_key_is_a_config_error(setting: str) -> None:
    with pytest.raises(celeriac.ConfigError, match=r"is on but no key is set; set "):
        make_app(**{setting: True})
    assert make_app(**{setting: False}).codec.filters  # turning it off without keys is fine


def test_no_signing_filter_without_keys(app: Celeriac) -> None:
    assert [f.name for f in app.codec.filters] == ["encryption-guard"]
    assert [f.name for f in make_app(security_sign_key=KEY).codec.filters] == ["encryption-guard", "sign"]


def test_a_verifying_app_without_a_sign_key_warns_that_it_sends_unsigned(caplog: pytest.LogCaptureFixture) -> None:
    make_app(security_verify_keys=[KEY]).codec  # noqa: B018
    assert any("has no sign_key" in record.getMessage() for record in caplog.records)


def test_celeriac_config_does_not_show_the_keys() -> None:
    shown = make_app(security_sign_key=KEY, security_verify_keys=[OLD_KEY]).conf.masked()
    assert KEY not in json.dumps(shown)
    assert OLD_KEY not in json.dumps(shown)
