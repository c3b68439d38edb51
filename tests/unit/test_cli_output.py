"""How `skm` prints messages: JSON, also for held requests of types it does not know."""

from __future__ import annotations

import argparse
import json

import pytest
from google.protobuf import any_pb2, wrappers_pb2

from skm.policy.v1 import blocked_action_pb2
from skm_cli.__main__ import _print, main


def test_a_payload_of_an_unknown_type_is_printed_as_its_type_and_bytes(capsys: pytest.CaptureFixture[str]) -> None:
    action = blocked_action_pb2.BlockedAction(
        name="tenants/t1/blockedActions/a",
        summary="run it",
        payload=any_pb2.Any(type_url="type.googleapis.com/acme.v1.Unknown", value=b"\x01\x02"),
    )
    _print(action, argparse.Namespace(json=True))
    printed = json.loads(capsys.readouterr().out)
    assert printed == {
        "name": "tenants/t1/blockedActions/a",
        "summary": "run it",
        "payload": {"@type": "type.googleapis.com/acme.v1.Unknown", "valueBase64": "AQI="},
    }


def test_a_payload_of_a_known_type_is_printed_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    payload = any_pb2.Any()
    payload.Pack(wrappers_pb2.StringValue(value="hello"))
    _print(blocked_action_pb2.BlockedAction(payload=payload), argparse.Namespace(json=True))
    printed = json.loads(capsys.readouterr().out)
    assert printed["payload"] == {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "hello"}


def test_an_empty_message_is_a_usage_error_before_anything_is_sent(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKM_TOKEN", "not-even-a-token")
    monkeypatch.setenv("SKM_URL", "http://127.0.0.1:9")  # nothing listens: nothing may be called
    assert main(["chat", "-m", "  "]) == 2
    assert "no session was made" in capsys.readouterr().err
