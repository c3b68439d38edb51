"""`skm`'s tenant: taken from the token in use, `--tenant` overriding it; `skm tenants` and
`skm token`'s usage errors and help."""

from __future__ import annotations

import jwt
import pytest

from skm_cli.__main__ import _tenant, main, parser


def _token(**claims: object) -> str:
    # The CLI reads the claims without verifying them (the services verify): any key will do.
    return jwt.encode({"sub": "alice", **claims}, "k" * 32, algorithm="HS256")


@pytest.mark.parametrize(
    "argv",
    [
        ["tool", "list"],
        ["tool", "run", "code_execution"],
        ["constitution", "get"],
        ["blocked", "list"],
        ["relationships", "read", "--object", "tool:"],
        ["budget", "show"],
    ],
)
def test_the_tenant_comes_from_the_token(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKM_TOKEN", _token(tenant="t1"))
    assert _tenant(parser().parse_args(argv)) == "t1"


def test_tenant_overrides_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKM_TOKEN", _token(tenant="t1"))
    assert _tenant(parser().parse_args(["tool", "list", "--tenant", "t2"])) == "t2"
    assert _tenant(parser().parse_args(["tool", "list", "--tenant", "tenants/t3"])) == "t3"


def test_token_option_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKM_TOKEN", _token(tenant="t1"))
    args = parser().parse_args(["tool", "list", "--token", _token(tenant="t9")])
    assert _tenant(args) == "t9"


def test_neither_token_nor_tenant_is_a_clear_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SKM_TOKEN", raising=False)
    assert main(["tool", "list"]) == 2
    err = capsys.readouterr().err
    assert "no tenant: pass --tenant" in err
    assert "Traceback" not in err


def test_a_token_without_tenant_claim_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SKM_TOKEN", _token())
    assert main(["relationships", "read", "--object", "tool:", "--mesh", "--mesh-key", "/nonexistent"]) == 2
    assert "the token has no tenant claim: pass --tenant" in capsys.readouterr().err


@pytest.mark.parametrize("action", ["create", "list"])
def test_create_and_list_are_for_the_mesh_operator(
    action: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SKM_TOKEN", _token(tenant="t1"))
    assert main(["tenants", action, "t1", "--admin", "alice"]) == 2
    assert "add --mesh" in capsys.readouterr().err


def test_create_needs_an_admin(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tenants", "create", "t1", "--mesh", "--mesh-key", "/nonexistent"]) == 2
    assert "at least one --admin" in capsys.readouterr().err


def test_token_mints_for_the_demo_tenant_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert parser().parse_args(["token", "--user", "admin"]).tenant == "demo"
    with pytest.raises(SystemExit) as shown:
        main(["token", "--help"])
    assert shown.value.code == 0
    assert "the demo tenant `make run` onboards" in " ".join(capsys.readouterr().out.split())


def test_tenants_help_names_its_actions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as shown:
        main(["tenants", "--help"])
    assert shown.value.code == 0
    out = capsys.readouterr().out
    for word in ("create", "show", "list", "--admin", "--mesh", "--json", "--constitution-file"):
        assert word in out
