"""`skm models`: the deployment's models and what the scoring job thinks of them.

  list             the registered models (any member of a tenant)
  scores           the tenant's latest model scores, by role, best first (--role to narrow)
  recommendations  the scoring job's latest recommendation per role and profile
  score --mesh     run the scoring job now (the mesh's operator), with its progress; --tenant
                   scores only that tenant

score = w_q*quality + w_c*(1/cost) + w_l*(1/latency) + w_r*reliability, each term in [0, 1]
(1/cost and 1/latency relative to the best model of the role), so a score lies in [0, 1].
Members call through the public URL with their token (the tenant defaults to the token's);
--mesh goes straight to svc_profiles, each call signed with the mesh key.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf import json_format

from skm.profiles.v1 import model_pb2 as registry_pb2
from skm.profiles.v1 import model_score_pb2, model_service_pb2, model_service_pb2_grpc
from skm.type.v1 import model_pb2
from skm_cli.errors import CliError
from skm_cli.tenants import DEFAULT_PROFILES_ADDR, use_mesh_key
from skm_runtime.principal import MESH_KEY_FILE_VAR, caller_metadata

_SERVICE = "/skm.profiles.v1.ModelService/"
ROLES = ("primary", "pre_slm", "utility", "embedding")

EPILOG = """examples:
  skm models list                                the registered models
  skm models scores --role primary               the tenant's PRIMARY scores, best first
  skm models recommendations --json              one JSON object per recommendation
  skm models score --mesh --tenant t1            score tenant t1 now, with progress"""

Auth = Callable[[str], Any]


def _stub(
    args: argparse.Namespace, public: Callable[[], tuple[grpc.Channel, Any]]
) -> tuple[model_service_pb2_grpc.ModelServiceStub, Auth]:
    if args.mesh:
        use_mesh_key(args.mesh_key)
        addr = args.profiles_addr or os.environ.get("SKM_PROFILES_ADDR") or DEFAULT_PROFILES_ADDR
        stub = model_service_pb2_grpc.ModelServiceStub(grpc.insecure_channel(addr))
        return stub, lambda method: caller_metadata(_SERVICE + method)
    channel, metadata = public()
    return model_service_pb2_grpc.ModelServiceStub(channel), lambda _method: metadata


def _role(args: argparse.Namespace) -> model_pb2.ModelRole.ValueType:
    if not args.role:
        return model_pb2.MODEL_ROLE_UNSPECIFIED
    return model_pb2.ModelRole.Value(f"MODEL_ROLE_{args.role.upper()}")


def _role_name(role: int) -> str:
    return model_pb2.ModelRole.Name(role).removeprefix("MODEL_ROLE_")  # type: ignore[arg-type]  # a wire number


def _short(name: str) -> str:
    return name.removeprefix("models/")


def _emit(message: Any, args: argparse.Namespace, line: str) -> None:
    print(json.dumps(json_format.MessageToDict(message)) if args.json else line, flush=True)


def _note(text: str) -> None:
    print(f"skm: {text}", file=sys.stderr, flush=True)


def _pages(call: Callable[[str], Any], field: str) -> Iterator[Any]:
    token = ""
    while True:
        reply = call(token)
        yield from getattr(reply, field)
        token = reply.next_page_token
        if not token:
            return


def _money(money: Any) -> str:
    value = money.units + money.nanos / 1e9
    return f"{value:.4g} {money.currency_code}".strip() if money.currency_code or value else "0"


def _list(args: argparse.Namespace, stub: Any, auth: Auth) -> int:
    def page(token: str) -> Any:
        request = model_service_pb2.ListModelsRequest(page_size=1000, page_token=token)
        return stub.ListModels(request, timeout=10, metadata=auth("ListModels"))

    for model in _pages(page, "models"):
        caps = ",".join(c.removeprefix("MODEL_CAPABILITY_") for c in map(_capability, model.capabilities))
        line = (
            f"{_short(model.name):<36} {caps:<26} in {_money(model.input_cost_per_million_tokens):>10}/M"
            f"  out {_money(model.output_cost_per_million_tokens):>10}/M  {model.endpoint_uri}"
        )
        _emit(model, args, line)
    return 0


def _capability(number: int) -> str:
    return registry_pb2.ModelCapability.Name(number)  # type: ignore[arg-type]  # a wire number


def _scores(args: argparse.Namespace, stub: Any, auth: Auth, tenant: str) -> int:
    def page(token: str) -> Any:
        request = model_service_pb2.ListModelScoresRequest(
            parent=f"tenants/{tenant}", role=_role(args), page_size=1000, page_token=token
        )
        return stub.ListModelScores(request, timeout=10, metadata=auth("ListModelScores"))

    shown = 0
    for score in _pages(page, "model_scores"):
        latency = f"{score.latency.ToNanoseconds() / 1e9:.2f} s" if score.HasField("latency") else "-"
        line = (
            f"{_role_name(score.role):<10} {_short(score.model):<32} score {score.score:.3f}"
            f"  quality {score.quality:.2f}"
            f"  cost {_money(score.cost_per_million_tokens)}/M  latency {latency}"
            f"  reliability {score.reliability:.2f}  samples {score.sample_count}"
        )
        _emit(score, args, line)
        shown += 1
    if not shown and not args.json:
        _note(f"no scores for tenants/{tenant} yet: the scoring job has not scored it (skm models score --mesh)")
    return 0


def _recommendations(args: argparse.Namespace, stub: Any, auth: Auth, tenant: str) -> int:
    def page(token: str) -> Any:
        request = model_service_pb2.ListModelRecommendationsRequest(
            parent=f"tenants/{tenant}", role=_role(args), page_size=1000, page_token=token
        )
        return stub.ListModelRecommendations(request, timeout=10, metadata=auth("ListModelRecommendations"))

    shown = 0
    for rec in _pages(page, "model_recommendations"):
        status = "applied" if rec.applied else f"not applied: {rec.not_applied_reason}"
        where = rec.model_profile.rsplit("/", 1)[-1] if rec.model_profile else "deployment default"
        _emit(rec, args, f"{rec.summary} [{where}; {status}]")
        shown += 1
    if not shown and not args.json:
        _note(f"no recommendations for tenants/{tenant} yet")
    return 0


def _score(args: argparse.Namespace, stub: Any, auth: Auth) -> int:
    parent = f"tenants/{args.tenant.removeprefix('tenants/')}" if args.tenant else ""
    final: model_score_pb2.ScoringRun | None = None
    for reply in stub.RunScoring(
        model_service_pb2.RunScoringRequest(parent=parent), timeout=args.timeout, metadata=auth("RunScoring")
    ):
        run = reply.scoring_run
        final = run
        if args.json:
            _emit(reply, args, "")
        else:
            _note(f"[{run.tenants_done}/{run.tenants_total}] {reply.step}")
    if final is None:
        raise CliError("the scoring run ended without a result")
    if not args.json:
        state = model_score_pb2.ScoringRun.State.Name(final.state).removeprefix("STATE_")
        print(
            f"{final.name} {state}: {final.tenants_done}/{final.tenants_total} tenants,"
            f" {final.profiles_changed} profiles changed by auto mode",
            flush=True,
        )
    return 0 if final.state == model_score_pb2.ScoringRun.STATE_SUCCEEDED else 1


def run(
    args: argparse.Namespace, public: Callable[[], tuple[grpc.Channel, Any]], token_tenant: Callable[[], str]
) -> int:
    """`public()`: the public channel and the caller's auth metadata (asked only without
    --mesh); `token_tenant()`: --tenant, else the tenant of the caller's token."""
    if args.action == "score":
        if not args.mesh:
            raise CliError("`skm models score` is for the mesh's operator: add --mesh (straight to svc_profiles)")
        stub, auth = _stub(args, public)
        return _score(args, stub, auth)
    if args.action in ("scores", "recommendations") and args.mesh and not args.tenant:
        raise CliError(f"`skm models {args.action} --mesh` needs --tenant (there is no token to take it from)")
    stub, auth = _stub(args, public)
    if args.action == "list":
        return _list(args, stub, auth)
    tenant = args.tenant.removeprefix("tenants/") if args.tenant else token_tenant()
    if args.action == "scores":
        return _scores(args, stub, auth, tenant)
    return _recommendations(args, stub, auth, tenant)


def add_parser(commands: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`skm models` on the top parser's subcommands."""
    models: argparse.ArgumentParser = commands.add_parser(
        "models",
        parents=[common],
        help="the registered models, their scores and recommendations; run the scoring job",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    models.add_argument("action", choices=("list", "scores", "recommendations", "score"))
    models.add_argument("--tenant", default="", help="tenant id (default: the token's; score: every tenant)")
    models.add_argument("--role", choices=ROLES, default="", help="scores, recommendations: only this role")
    models.add_argument(
        "--timeout", type=float, default=600.0, help="score: seconds the run may take (default %(default)s)"
    )
    models.add_argument(
        "--mesh", action="store_true", help="straight to svc_profiles, signed with the mesh key (no token)"
    )
    models.add_argument(
        "--mesh-key",
        default="",
        help=f"with --mesh: the mesh key file (default: ${MESH_KEY_FILE_VAR}, else the local stack's)",
    )
    models.add_argument(
        "--profiles-addr",
        default="",
        help=f"with --mesh: svc_profiles (default: $SKM_PROFILES_ADDR or {DEFAULT_PROFILES_ADDR})",
    )
    return models
