"""Tenant onboarding end to end, as a new user does it with the command line: the mesh's
operator onboards a tenant (`skm tenants create --mesh`), its admin mints a token and talks
with the agent, with no relationship written by hand; a member the admin adds lists the tools.

The tiny UNTRAINED models answer; the tests check what the CLI shows and how it exits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from typing import Any

from skm_stack import RunningStack
from skm_stack.devkeys import dev_keys_dir


def _skm(mesh: RunningStack, *args: str, token: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SKM_URL": mesh.envoy_url, "SKM_TOKEN": token}
    return subprocess.run(
        [sys.executable, "-m", "skm_cli", *args], capture_output=True, text=True, timeout=180, check=False, env=env
    )


def _mesh_args(mesh: RunningStack) -> list[str]:
    return ["--mesh", "--mesh-key", str(mesh.mesh_key_file), "--profiles-addr", mesh.services["profiles"].addr]


def _token(mesh: RunningStack, tenant: str, user: str, role: str) -> str:
    key = str(dev_keys_dir(mesh.state_dir) / "dev-signing-key.pem")
    minted = _skm(mesh, "token", "--tenant", tenant, "--user", user, "--role", role, "--key", key)
    assert minted.returncode == 0, minted.stderr
    return minted.stdout.strip()


def _onboard(mesh: RunningStack, *extra: str) -> tuple[str, dict[str, Any]]:
    tenant = f"n{uuid.uuid4().hex[:8]}"
    made = _skm(mesh, "tenants", "create", tenant, "--admin", "ada", "--json", *_mesh_args(mesh), *extra)
    assert made.returncode == 0, made.stderr
    assert "Traceback" not in made.stderr
    return tenant, json.loads(made.stdout)


def test_an_onboarded_tenants_admin_chats_with_no_relationship_written_by_hand(mesh: RunningStack) -> None:
    tenant, made = _onboard(mesh, "--display-name", "New tenant")
    assert made["name"] == f"tenants/{tenant}"
    assert made["state"] == "STATE_ACTIVE"
    assert made["admins"] == [f"tenants/{tenant}/users/ada"]
    token = _token(mesh, tenant, "ada", "admin")
    chat = _skm(
        mesh, "chat", "-m", "Work out 6 times 7 with Python.", "--json", "--tool-choice", "code_execution", token=token
    )
    assert chat.returncode == 0, chat.stderr
    events = [json.loads(line) for line in chat.stdout.splitlines()]
    assert events[0]["attached"]["session"]["name"].startswith(f"tenants/{tenant}/sessions/")
    verdicts = [e["event"]["toolCallVerdict"] for e in events[1:] if "toolCallVerdict" in e["event"]]
    assert verdicts
    assert verdicts[0]["decision"]["verdict"] == "VERDICT_ALLOW"
    assert events[-1]["event"]["turnStateChanged"]["state"] == "STATE_COMPLETED"
    # The tenant comes from the token: `skm tenants show` and `skm constitution get` need no --tenant.
    shown = _skm(mesh, "tenants", "show", "--json", token=token)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == made
    constitution = _skm(mesh, "constitution", "get", "--json", token=token)
    assert constitution.returncode == 0, constitution.stderr
    assert json.loads(constitution.stdout)["sha256"] == made["constitutionSha256"]


def test_a_member_the_admin_adds_lists_the_tools(mesh: RunningStack) -> None:
    tenant, _ = _onboard(mesh)
    admin = _token(mesh, tenant, "ada", "admin")
    added = _skm(
        mesh,
        "relationships",
        "write",
        f"user:tenants/{tenant}/users/mia",
        "member",
        f"tenant:tenants/{tenant}",
        token=admin,
    )
    assert added.returncode == 0, added.stderr
    member = _token(mesh, tenant, "mia", "member")
    listed = _skm(mesh, "tool", "list", token=member)
    assert listed.returncode == 0, listed.stderr
    tools = {line.split()[0]: line.split()[1] for line in listed.stdout.splitlines()}
    assert tools["code_execution"] == "high"
    assert "memory_load" in tools
    # --tenant overrides the token's: another tenant's catalogue is not this member's.
    other = _skm(mesh, "tool", "list", "--tenant", f"x{uuid.uuid4().hex[:8]}", token=member)
    assert other.returncode == 1
    assert "PERMISSION_DENIED" in other.stderr


def test_onboarding_again_changes_nothing_and_other_admins_are_refused(mesh: RunningStack) -> None:
    tenant, made = _onboard(mesh)
    again = _skm(mesh, "tenants", "create", tenant, "--admin", "ada", "--json", *_mesh_args(mesh))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == made
    other = _skm(mesh, "tenants", "create", tenant, "--admin", "bob", *_mesh_args(mesh))
    assert other.returncode == 1
    assert "TENANT_ALREADY_EXISTS" in other.stderr
    listed = _skm(mesh, "tenants", "list", "--json", *_mesh_args(mesh))
    assert listed.returncode == 0, listed.stderr
    assert made in [json.loads(line) for line in listed.stdout.splitlines()]


def test_the_demo_tenant_of_make_run_chats_after_skm_token_alone(mesh: RunningStack) -> None:
    """What `make run` does after its services are up (skm_stack.demo), then a new user's two
    commands: `skm token` (for the demo tenant by default) and `skm chat -m`."""
    onboard = (
        "import sys; from pathlib import Path; from skm_stack.demo import onboard_demo; "
        "print(onboard_demo(sys.argv[1], Path(sys.argv[2])).name)"
    )
    for _ in range(2):  # every start onboards it again, idempotently
        done = subprocess.run(
            [sys.executable, "-c", onboard, mesh.services["profiles"].addr, str(mesh.mesh_key_file)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "tenants/demo"
    key = str(dev_keys_dir(mesh.state_dir) / "dev-signing-key.pem")
    minted = _skm(mesh, "token", "--user", "admin", "--role", "admin", "--key", key)
    assert minted.returncode == 0, minted.stderr
    chat = _skm(
        mesh,
        "chat",
        "-m",
        "Work out 6 times 7 with Python.",
        "--json",
        "--tool-choice",
        "code_execution",
        token=minted.stdout.strip(),
    )
    assert chat.returncode == 0, chat.stderr
    events = [json.loads(line) for line in chat.stdout.splitlines()]
    assert events[0]["attached"]["session"]["name"].startswith("tenants/demo/sessions/")
