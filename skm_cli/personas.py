"""`skm persona` and `skm profile`: a tenant's personas and model profiles, and their revisions.

Every change of a persona or model profile is a revision ("1", "2", ...); `revisions` lists
them newest first with who made each and why, `show --revision N` prints one as it was, and
`rollback N` makes a new revision holding revision N's values (history is never rewritten).
Sessions keep the persona revision they started with. `persona train` (training mode) makes a
new revision whose examples are exchanges marked in DEVELOPER-mode sessions.

Through the public URL with the caller's token; the tenant defaults to the token's. Reading
is for the tenant's members, rollback for its admins.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf import json_format

from skm.profiles.v1 import (
    model_profile_pb2,
    model_profile_service_pb2,
    model_profile_service_pb2_grpc,
    persona_pb2,
    persona_service_pb2,
    persona_service_pb2_grpc,
    revision_pb2,
)
from skm.type.v1 import deployment_mode_pb2
from skm.type.v1 import model_pb2 as type_model_pb2
from skm_cli.errors import CliError

ACTIONS = ("list", "show", "revisions", "rollback")
PERSONA_ACTIONS = (*ACTIONS, "train")
_PAGE = 1000

PERSONA_EPILOG = """examples:
  skm persona list                          the tenant's personas (built-in ones too)
  skm persona show helper                   one persona, its current revision
  skm persona show helper --revision 2      ... as it was at revision 2
  skm persona revisions helper              every revision, newest first: who, when, why
  skm persona rollback helper 2             a new revision with revision 2's values (admins)
  skm persona train helper --turn S/3 --turn S/4
                                            training mode (operators): turns 3 and 4 of the
                                            DEVELOPER-mode session S become examples of a new,
                                            unsigned revision with its lineage"""

PROFILE_EPILOG = """examples:
  skm profile list                          the tenant's model profiles
  skm profile show primary-production       one profile (its id is its role and mode)
  skm profile revisions primary-production  every revision, newest first (auto mode's too)
  skm profile rollback primary-production 3 a new revision with revision 3's values (admins);
                                            auto_select keeps its current value"""

Public = Callable[[], tuple[grpc.Channel, Any]]
Resource = persona_pb2.Persona | model_profile_pb2.ModelProfile


def _name(tenant: str, collection: str, given: str, command: str) -> str:
    if not given:
        raise CliError(f"`skm {command}` needs the {collection[:-1]}'s id, e.g. skm {command} helper")
    if given.startswith("tenants/"):
        return given
    return f"tenants/{tenant}/{collection}/{given}"


def _revision_id(given: str, command: str) -> str:
    if not given.isdigit() or given.startswith("0"):
        raise CliError(f"`skm {command}` needs a revision id: a positive number, as `revisions` lists them")
    return given


def _origin(revision: revision_pb2.Revision) -> str:
    return revision_pb2.Revision.Origin.Name(revision.origin).removeprefix("ORIGIN_").lower()


def _when(resource: Resource) -> str:
    if resource.HasField("revision") and resource.revision.HasField("create_time"):
        return resource.revision.create_time.ToJsonString()
    return "-"


def _emit(resource: Resource, args: argparse.Namespace, line: Callable[[Any], str]) -> None:
    print(json.dumps(json_format.MessageToDict(resource)) if args.json else line(resource), flush=True)


def _revision_line(resource: Resource) -> str:
    revision = resource.revision
    note = f"  ({revision.note})" if revision.note else ""
    return f"{revision.revision_id:>4}  {_when(resource):<24}  {_origin(revision):<14}  {revision.author or '-'}{note}"


def _persona_line(persona: persona_pb2.Persona) -> str:
    revision = persona.revision.revision_id if persona.HasField("revision") else "built-in"
    signed = "signed" if persona.signature else "unsigned"
    return f"{persona.name.rsplit('/', 1)[-1]:<24} {persona.display_name[:30]:<30} {revision:<9} {signed}"


def _profile_line(profile: model_profile_pb2.ModelProfile) -> str:
    revision = profile.revision.revision_id if profile.HasField("revision") else "-"
    auto = " auto" if profile.auto_select else ""
    return f"{profile.name.rsplit('/', 1)[-1]:<24} rev {revision:<5} {', '.join(profile.model_tiers)}{auto}"


def _persona_text(persona: persona_pb2.Persona) -> str:
    rows = [
        ("name", persona.name),
        ("display name", persona.display_name),
        ("revision", persona.revision.revision_id if persona.HasField("revision") else "- (built-in)"),
    ]
    if persona.HasField("revision"):
        rows += [
            ("made", f"{_when(persona)} by {persona.revision.author or '-'} ({_origin(persona.revision)})"),
            ("note", persona.revision.note or "-"),
        ]
    rows += [
        ("tone", persona.tone or "-"),
        ("tools", ", ".join(t.rsplit("/", 1)[-1] for t in persona.allowed_tools) or "-"),
        ("memory", ", ".join(persona.memory_namespaces) or "-"),
        (
            "models",
            "; ".join(
                f"{type_model_pb2.ModelRole.Name(p.role).removeprefix('MODEL_ROLE_').lower()}:"
                f" {', '.join(p.model_tiers) or '(profile)'}"
                for p in persona.model_preferences
            )
            or "-",
        ),
        ("bundle digest", persona.bundle_digest),
        ("signed by", persona.signing_key or "- (unsigned)"),
        ("etag", persona.etag),
    ]
    text = "\n".join(f"{label + ':':<15}{value}" for label, value in rows)
    return f"{text}\nsystem prompt:\n{persona.system_prompt}"


def _profile_text(profile: model_profile_pb2.ModelProfile) -> str:
    role = type_model_pb2.ModelRole.Name(profile.role).removeprefix("MODEL_ROLE_").lower()
    mode = deployment_mode_pb2.DeploymentMode.Name(profile.mode).removeprefix("DEPLOYMENT_MODE_").lower()
    rows = [
        ("name", profile.name),
        ("role, mode", f"{role}, {mode}"),
        ("revision", profile.revision.revision_id if profile.HasField("revision") else "-"),
        ("made", f"{_when(profile)} by {profile.revision.author or '-'} ({_origin(profile.revision)})"),
        ("note", profile.revision.note or "-"),
        ("model tiers", ", ".join(profile.model_tiers)),
        ("temperature", str(profile.temperature) if profile.HasField("temperature") else "- (engine default)"),
        ("max tokens", str(profile.max_output_tokens or "- (engine default)")),
        ("auto select", "on" if profile.auto_select else "off"),
        ("etag", profile.etag),
    ]
    if profile.HasField("auto_select_bounds"):
        bounds = profile.auto_select_bounds
        cost = bounds.max_cost_per_million_tokens
        usd = cost.units + cost.nanos / 1e9
        rows.append(("auto bounds", f"cost <= {usd:g} USD/M tokens, quality >= {bounds.min_quality:g}"))
    return "\n".join(f"{label + ':':<15}{value}" for label, value in rows)


# -- personas ---------------------------------------------------------------------------------


def _persona_revisions(stub: Any, auth: Any, name: str) -> Iterator[persona_pb2.Persona]:
    token = ""
    while True:
        reply = stub.ListPersonaRevisions(
            persona_service_pb2.ListPersonaRevisionsRequest(name=name, page_size=_PAGE, page_token=token),
            timeout=10,
            metadata=auth,
        )
        yield from reply.personas
        token = reply.next_page_token
        if not token:
            return


def _turn(parent: str, given: str) -> str:
    """A turn's full name from "tenants/t/sessions/S/turns/N", "sessions/S/turns/N" or "S/N"."""
    if given.startswith("tenants/"):
        return given
    if given.startswith("sessions/"):
        return f"{parent}/{given}"
    session, slash, turn = given.partition("/")
    if not slash or not session or not turn:
        raise CliError(f"--turn {given!r}: expected SESSION/TURN or tenants/T/sessions/S/turns/N")
    return f"{parent}/sessions/{session}/turns/{turn}"


def _check(args: argparse.Namespace, command: str) -> None:
    """Usage errors before anything is sent."""
    if args.action != "list" and not args.name:
        raise CliError(f"`skm {command} {args.action}` needs an id, e.g. skm {command} {args.action} ID")
    if args.action == "train" and (command != "persona" or not getattr(args, "turn", None)):
        raise CliError("`skm persona train ID --turn SESSION/TURN ...` needs at least one --turn")
    if args.action == "rollback":
        _revision_id(args.revision or args.revision_id, f"{command} rollback")
    if args.action == "show" and args.revision:
        _revision_id(args.revision, f"{command} show --revision")


def run_persona(args: argparse.Namespace, public: Public, tenant: Callable[[], str]) -> int:
    _check(args, "persona")
    channel, auth = public()
    stub = persona_service_pb2_grpc.PersonaServiceStub(channel)
    parent = f"tenants/{tenant()}"
    if args.action == "list":
        token = ""
        while True:
            reply = stub.ListPersonas(
                persona_service_pb2.ListPersonasRequest(parent=parent, page_size=_PAGE, page_token=token),
                timeout=10,
                metadata=auth,
            )
            for persona in reply.personas:
                _emit(persona, args, _persona_line)
            token = reply.next_page_token
            if not token:
                return 0
    name = _name(parent.removeprefix("tenants/"), "personas", args.name, f"persona {args.action}")
    if args.action == "show":
        if args.revision:
            name = f"{name}@{_revision_id(args.revision, 'persona show --revision')}"
        got = stub.GetPersona(persona_service_pb2.GetPersonaRequest(name=name), timeout=10, metadata=auth)
        _emit(got.persona, args, _persona_text)
        return 0
    if args.action == "revisions":
        shown = 0
        for persona in _persona_revisions(stub, auth, name):
            _emit(persona, args, _revision_line)
            shown += 1
        if not shown and not args.json:
            print("skm: no revisions: a built-in persona changes only with the deployment", file=sys.stderr)
        return 0
    if args.action == "train":
        turns = [_turn(parent, given) for given in args.turn]
        trained = stub.TrainPersona(
            persona_service_pb2.TrainPersonaRequest(name=name, turns=turns, etag=args.etag), timeout=30, metadata=auth
        )
        _emit(trained.persona, args, _revision_line)
        return 0
    revision = _revision_id(args.revision or args.revision_id, "persona rollback")
    reply_rollback = stub.RollbackPersona(
        persona_service_pb2.RollbackPersonaRequest(name=name, revision_id=revision, etag=args.etag),
        timeout=10,
        metadata=auth,
    )
    _emit(reply_rollback.persona, args, _revision_line)
    return 0


# -- model profiles ---------------------------------------------------------------------------


def _profile_revisions(stub: Any, auth: Any, name: str) -> Iterator[model_profile_pb2.ModelProfile]:
    token = ""
    while True:
        reply = stub.ListModelProfileRevisions(
            model_profile_service_pb2.ListModelProfileRevisionsRequest(name=name, page_size=_PAGE, page_token=token),
            timeout=10,
            metadata=auth,
        )
        yield from reply.model_profiles
        token = reply.next_page_token
        if not token:
            return


def run_profile(args: argparse.Namespace, public: Public, tenant: Callable[[], str]) -> int:
    _check(args, "profile")
    channel, auth = public()
    stub = model_profile_service_pb2_grpc.ModelProfileServiceStub(channel)
    parent = f"tenants/{tenant()}"
    if args.action == "list":
        token = ""
        while True:
            reply = stub.ListModelProfiles(
                model_profile_service_pb2.ListModelProfilesRequest(parent=parent, page_size=_PAGE, page_token=token),
                timeout=10,
                metadata=auth,
            )
            for profile in reply.model_profiles:
                _emit(profile, args, _profile_line)
            token = reply.next_page_token
            if not token:
                return 0
    name = _name(parent.removeprefix("tenants/"), "modelProfiles", args.name, f"profile {args.action}")
    if args.action == "show":
        if args.revision:
            wanted = _revision_id(args.revision, "profile show --revision")
            found = next((p for p in _profile_revisions(stub, auth, name) if p.revision.revision_id == wanted), None)
            if found is None:
                raise CliError(f"{name} has no revision {wanted} (see `skm profile revisions {args.name}`)")
            _emit(found, args, _profile_text)
            return 0
        got = stub.GetModelProfile(
            model_profile_service_pb2.GetModelProfileRequest(name=name), timeout=10, metadata=auth
        )
        _emit(got.model_profile, args, _profile_text)
        return 0
    if args.action == "revisions":
        for profile in _profile_revisions(stub, auth, name):
            _emit(profile, args, _revision_line)
        return 0
    revision = _revision_id(args.revision or args.revision_id, "profile rollback")
    reply_rollback = stub.RollbackModelProfile(
        model_profile_service_pb2.RollbackModelProfileRequest(name=name, revision_id=revision, etag=args.etag),
        timeout=10,
        metadata=auth,
    )
    _emit(reply_rollback.model_profile, args, _revision_line)
    return 0


def _add(
    commands: Any, common: argparse.ArgumentParser, word: str, what: str, epilog: str, actions: tuple[str, ...]
) -> argparse.ArgumentParser:
    command: argparse.ArgumentParser = commands.add_parser(
        word,
        parents=[common],
        help=f"the tenant's {what}s and their revisions: list, show, revisions, rollback",
        description=__doc__,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument("action", choices=actions)
    command.add_argument("name", nargs="?", default="", metavar="ID", help=f"the {what}'s id, or its full name")
    command.add_argument(
        "revision_id", nargs="?", default="", metavar="REVISION", help="with rollback: the revision to go back to"
    )
    command.add_argument("--revision", default="", help="with show: that revision; with rollback: as REVISION")
    command.add_argument("--etag", default="", help=f"with rollback: refuse if the {what} changed since this etag")
    command.add_argument("--tenant", default="", help="tenant id (default: the token's tenant claim)")
    if word == "persona":
        command.add_argument(
            "--turn",
            action="append",
            default=[],
            metavar="SESSION/TURN",
            help="with train: a turn of a DEVELOPER-mode session to add as an example (repeatable)",
        )
    return command


def add_parsers(
    commands: Any, common: argparse.ArgumentParser, persona_actions: tuple[str, ...] = ()
) -> tuple[argparse.ArgumentParser, ...]:
    """`skm persona` and `skm profile` on the top parser's subcommands; `persona_actions`:
    more actions of `skm persona` that another module runs (persona bundles)."""
    return (
        _add(commands, common, "persona", "persona", PERSONA_EPILOG, (*PERSONA_ACTIONS, *persona_actions)),
        _add(commands, common, "profile", "model profile", PROFILE_EPILOG, ACTIONS),
    )
