"""`skm`: the platform from a terminal, through Envoy's public listener.

    skm token --user admin --role admin                  mint a development token (tenant: demo)
    skm token --tenant t1 --user alice --role operator    ... for a tenant of your own
    skm tenants create t1 --admin alice --mesh           onboard a tenant (mesh operator)
    skm tenants show|list [--mesh]                       a tenant as onboarding left it; every tenant
    skm persona list|show|revisions|rollback [ID] [REV]  personas and their revisions (--revision N)
    skm profile list|show|revisions|rollback [ID] [REV]  model profiles and their revisions
    skm keys generate|trust|list|remove [ID]             persona bundle keys; trusted keys of the tenant
    skm persona export|install|uninstall ...             signed persona bundles (see skm persona --help)
    skm constitution get|set --tenant t1 [--file F]     read or replace the constitution
    skm blocked list --tenant t1                         blocked actions waiting for an operator
    skm blocked approve|reject NAME [--note TEXT]        decide on one
    skm tool list --tenant t1                            the tool catalogue
    skm tool run NAME --tenant t1 --args 'JSON'          run a tool, streaming its output
    skm chat [--session ID] [--tool-choice TOOL]         talk with an agent: tokens, tool calls, verdicts
    skm chat -m TEXT --json                              one message; every event as a JSON line
    skm relationships write|delete --tenant t1 SUBJECT RELATION OBJECT ...
                                                         grant or revoke (tenant admins)
    skm relationships read --tenant t1 --object OBJECT   who has what on an object
    skm relationships write --mesh ...                   straight to svc_policy with the mesh key
                                                         (the mesh operator, e.g. a tenant's first admin)
    skm budget set|show|remove --tenant t1 [--limit-usd 25]  a tenant's monthly model budget (admins)
    skm analytics [--since 7d --bucket 6h] [--by model]  the main series as sparklines (operators)
    skm analytics cost [--days 30]                       model cost per day and model (billing)
    skm audit [--session ID] [--type T ...] [--all]      the audit trail, page by page (admins)
    skm models list|scores|recommendations [--role R]    the registry, the scoring job's scores and advice
    skm models score --mesh [--tenant t1]                run the scoring job now, with progress (operators)

Calls read the token from --token or SKM_TOKEN and go to --url or SKM_URL
(default http://127.0.0.1:8080). --url, --token and --json go before or after the command.
Every command that needs a tenant takes it from the token's tenant claim; --tenant overrides it.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import jwt
from google.protobuf import any_pb2, json_format

from skm.policy.v1 import (
    access_pb2,
    blocked_action_pb2,
    blocked_action_service_pb2,
    blocked_action_service_pb2_grpc,
    constitution_pb2,
    constitution_service_pb2,
    constitution_service_pb2_grpc,
    policy_service_pb2,
    policy_service_pb2_grpc,
)
from skm.tools.v1 import execution_pb2, tool_pb2, tool_service_pb2, tool_service_pb2_grpc
from skm.type.v1 import policy_decision_pb2
from skm_cli import analytics, budget, bundles, chat, models, personas, tenants, voice
from skm_cli.errors import CallFailed, CliError, OutputClosed
from skm_runtime.principal import (
    MESH_KEY_FILE_VAR,
    MeshKeyInvalid,
    caller_metadata,
    configure_mesh_key,
    use_caller_name,
)
from skm_runtime.status import error_info_of
from skm_stack.demo import DEMO_TENANT
from skm_stack.devkeys import KEY_ID, dev_keys_dir, mesh_key_file
from skm_stack.paths import default_state_dir

DEFAULT_URL = "http://127.0.0.1:8080"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def _target(url: str) -> str:
    for prefix in ("http://", "https://"):
        if url.startswith(prefix):
            return url[len(prefix) :].rstrip("/")
    return url


def _channel(args: argparse.Namespace) -> grpc.Channel:
    return grpc.insecure_channel(_target(args.url))


def _token(args: argparse.Namespace) -> str:
    token: str = args.token or os.environ.get("SKM_TOKEN", "")
    if not token:
        raise CliError("no token: pass --token or set SKM_TOKEN (make one with `skm token`)")
    return token


def _auth(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {_token(args)}"),)


def _tenant(args: argparse.Namespace) -> str:
    """--tenant (`t1` or `tenants/t1`), else the tenant claim of the token in use."""
    given = str(getattr(args, "tenant", "") or "")
    if given:
        return given.removeprefix("tenants/")
    token: str = args.token or os.environ.get("SKM_TOKEN", "")
    if not token:
        raise CliError("no tenant: pass --tenant, or a token (--token or SKM_TOKEN) whose tenant claim names it")
    return chat.tenant_of(token)


def _mint(args: argparse.Namespace, constitution_sha256: str) -> str:
    key_file = Path(args.key) if args.key else dev_keys_dir(default_state_dir()) / "dev-signing-key.pem"
    if not key_file.is_file():
        raise CliError(f"no signing key at {key_file}: start the platform with `make run` first, or pass --key")
    now = int(time.time())
    claims = {
        "iss": args.issuer,
        "aud": args.audience,
        "sub": args.user,
        "tenant": args.tenant,
        "roles": args.role or ["member"],
        "constitution_sha256": constitution_sha256,
        "iat": now,
        "nbf": now,
        "exp": now + int(args.ttl),
        "jti": str(uuid.uuid4()),
    }
    return jwt.encode(claims, key_file.read_bytes(), algorithm="EdDSA", headers={"kid": KEY_ID})


def cmd_token(args: argparse.Namespace) -> int:
    """A token for the current constitution: mint, read the constitution with it, mint again."""
    digest = EMPTY_SHA256
    if not args.offline:
        first = _mint(args, EMPTY_SHA256)
        stub = constitution_service_pb2_grpc.ConstitutionServiceStub(_channel(args))
        request = constitution_service_pb2.GetConstitutionRequest(name=f"tenants/{args.tenant}/constitution")
        reply = stub.GetConstitution(request, timeout=10, metadata=(("authorization", f"Bearer {first}"),))
        digest = reply.constitution.sha256
    print(_mint(args, digest))
    return 0


def cmd_constitution(args: argparse.Namespace) -> int:
    stub = constitution_service_pb2_grpc.ConstitutionServiceStub(_channel(args))
    name = f"tenants/{_tenant(args)}/constitution"
    current = stub.GetConstitution(
        constitution_service_pb2.GetConstitutionRequest(name=name), timeout=10, metadata=_auth(args)
    ).constitution
    if args.action == "get":
        _print(current, args)
        return 0
    content = Path(args.file).read_text() if args.file else sys.stdin.read()
    updated = stub.UpdateConstitution(
        constitution_service_pb2.UpdateConstitutionRequest(
            constitution=constitution_pb2.Constitution(name=name, content=content, etag=current.etag)
        ),
        timeout=10,
        metadata=_auth(args),
    ).constitution
    _print(updated, args)
    print("tokens issued for the old constitution are now stale: get a new one with `skm token`", file=sys.stderr)
    return 0


def cmd_blocked(args: argparse.Namespace) -> int:
    stub = blocked_action_service_pb2_grpc.BlockedActionServiceStub(_channel(args))
    if args.action == "list":
        shown, token = 0, ""
        while True:  # every page
            reply = stub.ListBlockedActions(
                blocked_action_service_pb2.ListBlockedActionsRequest(
                    parent=f"tenants/{_tenant(args)}",
                    states=[blocked_action_pb2.BlockedAction.STATE_PENDING],
                    page_size=100,
                    page_token=token,
                ),
                timeout=10,
                metadata=_auth(args),
            )
            for action in reply.blocked_actions:
                _print(action, args)
            shown += len(reply.blocked_actions)
            token = reply.next_page_token
            if not token:
                break
        if not shown and not args.json:
            print("no blocked action waits for a decision")
        return 0
    if not args.name:
        raise CliError(f"`skm blocked {args.action}` needs the blocked action's name")
    if args.action == "approve":
        decided = stub.ApproveBlockedAction(
            blocked_action_service_pb2.ApproveBlockedActionRequest(name=args.name, note=args.note),
            timeout=10,
            metadata=_auth(args),
        ).blocked_action
    else:
        decided = stub.RejectBlockedAction(
            blocked_action_service_pb2.RejectBlockedActionRequest(name=args.name, note=args.note),
            timeout=10,
            metadata=_auth(args),
        ).blocked_action
    _print(decided, args)
    return 0


def cmd_tool(args: argparse.Namespace) -> int:
    stub = tool_service_pb2_grpc.ToolServiceStub(_channel(args))
    tenant = _tenant(args)
    if args.action == "list":
        reply = stub.ListTools(
            tool_service_pb2.ListToolsRequest(parent=f"tenants/{tenant}"), timeout=10, metadata=_auth(args)
        )
        for tool in reply.tools:
            if args.json:
                _print(tool, args)
            else:
                risk = tool_pb2.RiskLevel.Name(tool.risk_level).removeprefix("RISK_LEVEL_").lower()
                print(f"{tool.name.rsplit('/', 1)[-1]:<20} {risk:<8} {tool.description.splitlines()[0]}")
        return 0
    if not args.name:
        raise CliError("`skm tool run` needs the tool's name, e.g. code_execution")
    request = tool_service_pb2.ExecuteToolRequest(
        tool=f"tenants/{tenant}/tools/{args.name}", arguments_json=args.args, request_id=str(uuid.uuid4())
    )
    succeeded = False
    for update in stub.ExecuteTool(request, timeout=args.timeout, metadata=_auth(args)):
        kind = update.WhichOneof("update")
        if args.json:
            _print(update, args)
        elif kind == "output":
            stream = sys.stdout if update.output.stream == execution_pb2.OutputChunk.STREAM_STDOUT else sys.stderr
            stream.write(update.output.data.decode(errors="replace"))
            stream.flush()
        elif kind == "decision":
            verdict = policy_decision_pb2.Verdict.Name(update.decision.verdict).removeprefix("VERDICT_")
            waiting = (
                f", waiting for an operator: {update.decision.blocked_action}" if update.decision.blocked_action else ""
            )
            print(f"[policy: {verdict} {update.decision.reason}{waiting}]", file=sys.stderr)
        elif kind == "result":
            if update.result.HasField("success"):
                print(f"[result: {update.result.success.output_json}]", file=sys.stderr)
            else:
                failure = update.result.failure
                reason = execution_pb2.FailureReason.Name(failure.reason).removeprefix("FAILURE_REASON_")
                print(f"[failed: {reason}: {failure.message}]", file=sys.stderr)
        if kind == "result":
            succeeded = update.result.HasField("success")
    return 0 if succeeded else 1


_POLICY_SERVICE = "/skm.policy.v1.PolicyService/"
DEFAULT_POLICY_ADDR = "127.0.0.1:50055"
DEFAULT_ANALYTICS_ADDR = "127.0.0.1:50057"


def _triples(words: Sequence[str]) -> list[access_pb2.Relationship]:
    if not words or len(words) % 3:
        raise CliError(
            "relationships are given as SUBJECT RELATION OBJECT, one or more times,"
            " e.g. user:tenants/t1/users/alice operator tenant:tenants/t1"
        )
    return [
        access_pb2.Relationship(subject=words[i], relation=words[i + 1], object=words[i + 2])
        for i in range(0, len(words), 3)
    ]


def _relationships_call(args: argparse.Namespace) -> tuple[Any, Any]:
    """The policy stub, and how to authenticate a call of a method (its name) on it."""
    if not args.mesh:
        stub = policy_service_pb2_grpc.PolicyServiceStub(_channel(args))
        auth = _auth(args)
        return stub, lambda _method: auth
    # The mesh operator: straight to svc_policy, each call signed with the mesh key.
    key = Path(args.mesh_key or os.environ.get(MESH_KEY_FILE_VAR) or mesh_key_file(default_state_dir()))
    try:
        configure_mesh_key(key)
    except MeshKeyInvalid as exc:
        raise CliError(f"{exc} (pass --mesh-key or set {MESH_KEY_FILE_VAR}; `make run` makes one)") from None
    use_caller_name("skm-cli")
    addr = args.policy_addr or os.environ.get("SKM_POLICY_ADDR") or DEFAULT_POLICY_ADDR
    stub = policy_service_pb2_grpc.PolicyServiceStub(grpc.insecure_channel(addr))
    return stub, lambda method: caller_metadata(_POLICY_SERVICE + method)


def cmd_relationships(args: argparse.Namespace) -> int:
    parent = f"tenants/{_tenant(args)}"
    if args.action == "read":
        if args.triples:
            raise CliError("`skm relationships read` takes its filter as --subject, --relation and --object")
        if not args.object:
            raise CliError("`skm relationships read` needs --object: an object, or `TYPE:` for all of a type")
        stub, auth = _relationships_call(args)
        shown, token = 0, ""
        while True:  # every page
            reply = stub.ReadRelationships(
                policy_service_pb2.ReadRelationshipsRequest(
                    parent=parent,
                    subject=args.subject,
                    relation=args.relation,
                    object=args.object,
                    page_size=1000,
                    page_token=token,
                ),
                timeout=10,
                metadata=auth("ReadRelationships"),
            )
            for relationship in reply.relationships:
                if args.json:
                    _print(relationship, args)
                else:
                    print(f"{relationship.subject} {relationship.relation} {relationship.object}")
            shown += len(reply.relationships)
            token = reply.next_page_token
            if not token:
                break
        if not shown and not args.json:
            print("no relationship matches", file=sys.stderr)
        return 0
    relationships = _triples(args.triples)
    stub, auth = _relationships_call(args)
    if args.action == "write":
        stub.WriteRelationships(
            policy_service_pb2.WriteRelationshipsRequest(parent=parent, relationships=relationships),
            timeout=10,
            metadata=auth("WriteRelationships"),
        )
    else:
        stub.DeleteRelationships(
            policy_service_pb2.DeleteRelationshipsRequest(parent=parent, relationships=relationships),
            timeout=10,
            metadata=auth("DeleteRelationships"),
        )
    done = "written" if args.action == "write" else "deleted"
    print(f"{len(relationships)} relationship(s) {done}", file=sys.stderr)
    return 0


def cmd_budget(args: argparse.Namespace) -> int:
    args.tenant = _tenant(args)
    stub, auth = _relationships_call(args)
    if args.action == "set":
        return budget.set_budget(stub, auth, args)
    if args.action == "remove":
        return budget.remove_budget(stub, auth, args)
    if args.mesh:
        addr = args.analytics_addr or os.environ.get("SKM_ANALYTICS_ADDR") or DEFAULT_ANALYTICS_ADDR
        analytics = budget.analytics_stub(grpc.insecure_channel(addr))
        metadata: Any = caller_metadata("/skm.analytics.v1.AnalyticsService/GetModelSpend")
    else:
        analytics, metadata = budget.analytics_stub(_channel(args)), _auth(args)
    shown = budget.show_budget(stub, auth, analytics, metadata, args)
    print(json.dumps(shown) if args.json else budget.render(shown))
    return 0


def cmd_persona(args: argparse.Namespace) -> int:
    if args.action in bundles.PERSONA_ACTIONS:
        return bundles.run_persona(args, lambda: (_channel(args), _auth(args)), lambda: _tenant(args))
    return personas.run_persona(args, lambda: (_channel(args), _auth(args)), lambda: _tenant(args))


def cmd_keys(args: argparse.Namespace) -> int:
    return bundles.run_keys(args, lambda: (_channel(args), _auth(args)), lambda: _tenant(args))


def cmd_profile(args: argparse.Namespace) -> int:
    return personas.run_profile(args, lambda: (_channel(args), _auth(args)), lambda: _tenant(args))


def cmd_models(args: argparse.Namespace) -> int:
    return models.run(args, lambda: (_channel(args), _auth(args)), lambda: _tenant(args))


def cmd_tenants(args: argparse.Namespace) -> int:
    return tenants.run(args, lambda: (_channel(args), _auth(args)), lambda: _tenant(args))


def cmd_chat(args: argparse.Namespace) -> int:
    return chat.run(args, _channel(args), _token(args), _auth(args))


def cmd_voice(args: argparse.Namespace) -> int:
    return voice.run(args, _channel(args), _token(args), _auth(args))


def cmd_analytics(args: argparse.Namespace) -> int:
    return analytics.run(args, _channel(args), _token(args), _auth(args))


def cmd_audit(args: argparse.Namespace) -> int:
    return analytics.run_audit(args, _channel(args), _token(args), _auth(args))


def _print(message: Any, args: argparse.Namespace) -> None:
    try:
        data = json_format.MessageToDict(message)
    except TypeError:
        # A held request whose type this client does not know (blocked actions hold any
        # service's request): its type and bytes, as JSON's mapping of Any would show them.
        payload = getattr(message, "payload", None)
        if not isinstance(payload, any_pb2.Any):
            raise
        rest = type(message)()
        rest.CopyFrom(message)
        rest.ClearField("payload")
        data = json_format.MessageToDict(rest)
        data["payload"] = {"@type": payload.type_url, "valueBase64": base64.b64encode(payload.value).decode()}
    print(json.dumps(data) if args.json else json.dumps(data, indent=2))


def _mesh_options(command: argparse.ArgumentParser, services: str) -> None:
    """--mesh and its options: as the mesh's operator, straight to the services."""
    command.add_argument(
        "--mesh", action="store_true", help=f"straight to {services}, signed with the mesh key (no token)"
    )
    command.add_argument(
        "--mesh-key",
        default="",
        help=f"with --mesh: the mesh key file (default: ${MESH_KEY_FILE_VAR}, else the local stack's)",
    )
    command.add_argument(
        "--policy-addr",
        default="",
        help=f"with --mesh: svc_policy (default: $SKM_POLICY_ADDR or {DEFAULT_POLICY_ADDR})",
    )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="skm", description=__doc__.split("\n\n")[0])
    top.add_argument(
        "--url", default=os.environ.get("SKM_URL", DEFAULT_URL), help=f"public URL (default {DEFAULT_URL})"
    )
    top.add_argument("--token", default="", help="bearer token (default: $SKM_TOKEN)")
    top.add_argument("--json", action="store_true", help="one JSON object per line")
    # The same options after the command (`skm chat -m hi --json`); SUPPRESS leaves the values
    # given before it in place when they are not repeated.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help="public URL (default: $SKM_URL or the local one)")
    common.add_argument("--token", default=argparse.SUPPRESS, help="bearer token (default: $SKM_TOKEN)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="one JSON object per line")
    commands = top.add_subparsers(dest="command", required=True)

    token = commands.add_parser(
        "token", parents=[common], help="mint a development token (signed with `make run`'s dev key)"
    )
    token.add_argument(
        "--tenant",
        default=DEMO_TENANT,
        help=f"tenant id, e.g. t1 (default: {DEMO_TENANT}, the demo tenant `make run` onboards)",
    )
    token.add_argument("--user", required=True, help="user id, e.g. alice")
    token.add_argument("--role", action="append", choices=("member", "operator", "admin"), help="repeatable")
    token.add_argument("--ttl", type=int, default=3600, help="seconds the token is valid (default 3600)")
    token.add_argument("--key", default="", help="PEM private key (default: the running stack's dev key)")
    token.add_argument("--issuer", default="skm-dev")
    token.add_argument("--audience", default="skm")
    token.add_argument("--offline", action="store_true", help="don't ask for the constitution (empty document)")
    token.set_defaults(run=cmd_token)

    constitution = commands.add_parser("constitution", parents=[common], help="read or replace a tenant's constitution")
    constitution.add_argument("action", choices=("get", "set"))
    constitution.add_argument("--tenant", default="", help="tenant id (default: the token's tenant claim)")
    constitution.add_argument("--file", default="", help="with set: the document (default: stdin)")
    constitution.set_defaults(run=cmd_constitution)

    blocked = commands.add_parser("blocked", parents=[common], help="blocked actions waiting for an operator")
    blocked.add_argument("action", choices=("list", "approve", "reject"))
    blocked.add_argument("name", nargs="?", default="", help="with approve/reject: tenants/T/blockedActions/ID")
    blocked.add_argument("--tenant", default="", help="with list: tenant id (default: the token's tenant claim)")
    blocked.add_argument("--note", default="", help="with approve/reject: why")
    blocked.set_defaults(run=cmd_blocked)

    tool = commands.add_parser("tool", parents=[common], help="list tools, or run one and stream its output")
    tool.add_argument("action", choices=("list", "run"))
    tool.add_argument("name", nargs="?", default="", help="with run: the tool, e.g. code_execution")
    tool.add_argument("--tenant", default="", help="tenant id (default: the token's tenant claim)")
    tool.add_argument(
        "--args", default="{}", help='with run: the arguments as JSON, e.g. {"runtime": "python", "code": "print(1)"}'
    )
    tool.add_argument("--timeout", type=float, default=600.0, help="seconds to wait, approval included (default 600)")
    tool.set_defaults(run=cmd_tool)

    relations = commands.add_parser(
        "relationships",
        parents=[common],
        help="grant, revoke or read who may do what (OpenFGA relationships of a tenant)",
        description="Relationships of a tenant in policy: as a tenant admin through Envoy (with a token),"
        " or with --mesh as the mesh's operator, straight to svc_policy, each call signed with the mesh key"
        " (how a tenant's first admin is named).",
        epilog="e.g. skm relationships write --mesh --tenant t1 user:tenants/t1/users/alice admin tenant:tenants/t1",
    )
    relations.add_argument("action", choices=("write", "delete", "read"))
    relations.add_argument(
        "triples", nargs="*", metavar="SUBJECT RELATION OBJECT", help="with write/delete: one or more relationships"
    )
    relations.add_argument("--tenant", default="", help="tenant id, e.g. t1 (default: the token's tenant claim)")
    relations.add_argument("--subject", default="", help="with read: only this subject")
    relations.add_argument("--relation", default="", help="with read: only this relation")
    relations.add_argument("--object", default="", help="with read: the object, or TYPE: for every one of a type")
    _mesh_options(relations, "svc_policy")
    relations.set_defaults(run=cmd_relationships)

    money = commands.add_parser(
        "budget",
        parents=[common],
        help="a tenant's monthly model budget per role: set, show or remove it",
        description=budget.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="e.g. skm budget set --tenant t1 --limit-usd 25; skm budget show --tenant t1",
    )
    money.add_argument("action", choices=("set", "show", "remove"))
    money.add_argument("--tenant", default="", help="tenant id, e.g. t1 (default: the token's tenant claim)")
    money.add_argument("--role", choices=budget.ROLES, default="primary", help="the calls it limits (default primary)")
    money.add_argument("--limit-usd", type=float, help="with set: the monthly limit in USD")
    money.add_argument(
        "--spender",
        action="append",
        metavar="SUBJECT",
        help="with set: who spends from it, e.g. persona:tenants/t1/personas/coder (default: the tenant's members)",
    )
    _mesh_options(money, "svc_policy and svc_analytics")
    money.add_argument(
        "--analytics-addr",
        default="",
        help=f"with --mesh: svc_analytics (default: $SKM_ANALYTICS_ADDR or {DEFAULT_ANALYTICS_ADDR})",
    )
    money.set_defaults(run=cmd_budget)

    tenants.add_parser(commands, common).set_defaults(run=cmd_tenants)
    models.add_parser(commands, common).set_defaults(run=cmd_models)
    persona_command, profile_command = personas.add_parsers(commands, common, bundles.PERSONA_ACTIONS)
    persona_command.set_defaults(run=cmd_persona)
    bundles.extend_persona_parser(persona_command)
    bundles.add_keys_parser(commands, common).set_defaults(run=cmd_keys)
    profile_command.set_defaults(run=cmd_profile)

    talk = commands.add_parser(
        "chat",
        parents=[common],
        help="talk with an agent: its tokens, tool calls and policy verdicts as they happen",
        description=chat.DESCRIPTION,
        epilog="commands at the prompt:\n" + chat.SLASH_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    talk.add_argument("-m", "--message", default=None, metavar="TEXT", help="send this one message and exit")
    talk.add_argument("--tenant", default="", help="tenant id (default: the token's tenant claim)")
    talk.add_argument("--session", default="", help="continue a session: its id or tenants/T/sessions/ID")
    talk.add_argument("--persona", default="default", help="new session's persona (default: default)")
    talk.add_argument(
        "--mode", choices=tuple(chat.MODES), default="developer", help="new session's mode (default: developer)"
    )
    talk.add_argument(
        "--tool-choice",
        default="",
        metavar="TOOL",
        help="a tool the model must call first in each turn, e.g. code_execution",
    )
    talk.add_argument(
        "--after",
        type=int,
        default=None,
        metavar="N",
        help="with --session: first replay the stored events after sequence N (0: all of them); "
        "default: only what happens from now on",
    )
    talk.set_defaults(run=cmd_chat)
    voice.add_parser(commands, common).set_defaults(run=cmd_voice)

    dashboard = commands.add_parser(
        "analytics",
        parents=[common],
        help="the tenant's main series as sparklines (operators); `analytics cost`: model cost per day",
        description=analytics.DASHBOARD_DESCRIPTION,
        epilog=analytics.DASHBOARD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dashboard.add_argument("--tenant", default="", help="tenant id (default: the token's tenant claim)")
    dashboard.add_argument("--since", default="24h", help="start: 30m, 24h, 7d ago, an ISO 8601 time (default 24h)")
    dashboard.add_argument("--until", default="now", help="end, exclusive: as --since, or now (default now)")
    dashboard.add_argument("--bucket", default="1h", help="bucket width, 1m or more, e.g. 5m, 1h, 1d (default 1h)")
    dashboard.add_argument(
        "--persona", action="append", metavar="P", help="only this persona (its id or full name); repeatable"
    )
    dashboard.add_argument(
        "--model", action="append", metavar="M", help="only this model, e.g. qwen2.5-coder-0.5b-instruct; repeatable"
    )
    dashboard.add_argument("--by", choices=tuple(analytics.DIMENSIONS), help="a series per persona or per model")
    dashboard.set_defaults(run=cmd_analytics)
    views = dashboard.add_subparsers(dest="view", metavar="{cost}")
    cost = views.add_parser(
        "cost",
        parents=[common],
        help="model cost per UTC day and model, with totals per model and currency (billing)",
        description=analytics.COST_DESCRIPTION,
    )
    # SUPPRESS: a --tenant given before `cost` stays.
    cost.add_argument("--tenant", default=argparse.SUPPRESS, help="tenant id (default: the token's tenant claim)")
    cost.add_argument(
        "--days", type=int, default=30, help=f"days, today included (default 30, at most {analytics.MAX_DAYS})"
    )

    audit = commands.add_parser(
        "audit",
        parents=[common],
        help="the tenant's audit trail, page by page (admins)",
        description=analytics.AUDIT_DESCRIPTION,
        epilog=analytics.AUDIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    audit.add_argument("--tenant", default="", help="tenant id (default: the token's tenant claim)")
    audit.add_argument("--session", default="", help="only this session: its id or tenants/T/sessions/ID")
    audit.add_argument(
        "--type",
        action="extend",
        nargs="+",
        metavar="TYPE",
        help=f"only these event types (repeatable): {', '.join(analytics.EVENT_TYPES)}",
    )
    audit.add_argument("--since", default="", help="from: 30m, 24h, 7d ago or an ISO 8601 time (default: the oldest)")
    audit.add_argument("--until", default="", help="to, exclusive: as --since, or now (default: now)")
    audit.add_argument(
        "--limit", type=int, default=100, help=f"events per page, 1 to {analytics.MAX_PAGE} (default 100)"
    )
    audit.add_argument("--page-token", default="", help="the page where a previous `skm audit` stopped")
    audit.add_argument("--all", action="store_true", help="follow every page to the last")
    audit.set_defaults(run=cmd_audit)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    top = parser()
    args, extra = top.parse_known_args(argv)
    if extra:
        # argparse takes a command's positionals in one go: relationships given after its
        # options (`write --tenant t1 S R O`) come back here.
        if args.command == "relationships" and not any(word.startswith("-") for word in extra):
            args.triples = [*args.triples, *extra]
        else:
            top.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        code: int = args.run(args)
        return code
    except (BrokenPipeError, OutputClosed):
        # The reader of our output went away (`skm ... | head`): stop quietly, as other
        # command-line tools do, and keep the interpreter's final flush from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except CliError as error:
        print(f"skm: {error}", file=sys.stderr)
        return 2
    except CallFailed as error:
        print(f"skm: {error}", file=sys.stderr)
        return 1
    except grpc.RpcError as error:
        info = error_info_of(error)
        reason = f" [{info.reason}]" if info is not None else ""
        # The metadata names what the reason is about, e.g. policy's own decision_reason.
        about = ", ".join(f"{k}={v}" for k, v in sorted(info.metadata.items())) if info is not None else ""
        said = f"{error.details()} ({about})" if about else error.details()
        print(f"skm: {error.code().name}{reason}: {said}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
