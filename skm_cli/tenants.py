"""`skm tenants`: onboard a tenant, show one, list them.

Onboarding writes, through svc_profiles, everything a tenant needs before its first user can
talk to an agent: its constitution (when it has none), its first admins, the default risk
level of every tool, and the built-in personas' tool and memory permissions. It is idempotent:
running it again finishes a tenant left PROVISIONING, and returns an ACTIVE one unchanged.

create and list are for the mesh's operator (--mesh: straight to svc_profiles, each call
signed with the mesh key); show is for the tenant's members too (through Envoy, with a token;
the tenant defaults to the token's).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from skm.profiles.v1 import tenant_pb2, tenant_service_pb2, tenant_service_pb2_grpc
from skm_cli.errors import CliError
from skm_runtime.principal import (
    MESH_KEY_FILE_VAR,
    MeshKeyInvalid,
    caller_metadata,
    configure_mesh_key,
    use_caller_name,
)
from skm_stack.devkeys import mesh_key_file
from skm_stack.paths import default_state_dir

DEFAULT_PROFILES_ADDR = "127.0.0.1:50056"
_SERVICE = "/skm.profiles.v1.TenantService/"

EPILOG = """examples:
  skm tenants create t1 --admin alice --mesh        onboard tenant t1, alice its first admin
  skm tenants list --mesh                           every tenant of the deployment
  skm tenants show                                  the token's tenant (SKM_TOKEN)
  skm tenants show t1 --mesh                        any tenant, as the mesh's operator"""

Auth = Callable[[str], Any]


def use_mesh_key(given: str) -> None:
    """Sign this process's calls with the mesh key: `given`, else $SKM_MESH_KEY_FILE, else the
    local stack's (which `make run` makes)."""
    key = Path(given or os.environ.get(MESH_KEY_FILE_VAR) or mesh_key_file(default_state_dir()))
    try:
        configure_mesh_key(key)
    except MeshKeyInvalid as exc:
        raise CliError(f"{exc} (pass --mesh-key or set {MESH_KEY_FILE_VAR}; `make run` makes one)") from None
    use_caller_name("skm-cli")


def _stub(
    args: argparse.Namespace, public: Callable[[], tuple[grpc.Channel, Any]]
) -> tuple[tenant_service_pb2_grpc.TenantServiceStub, Auth]:
    """The TenantService stub and the metadata of a call of each method: signed with the mesh
    key (--mesh), or the caller's token through the public URL."""
    if args.mesh:
        use_mesh_key(args.mesh_key)
        addr = args.profiles_addr or os.environ.get("SKM_PROFILES_ADDR") or DEFAULT_PROFILES_ADDR
        return tenant_service_pb2_grpc.TenantServiceStub(grpc.insecure_channel(addr)), lambda method: caller_metadata(
            _SERVICE + method
        )
    channel, metadata = public()
    return tenant_service_pb2_grpc.TenantServiceStub(channel), lambda _method: metadata


def _note(text: str) -> None:
    print(f"skm: {text}", file=sys.stderr, flush=True)


def _state(tenant: tenant_pb2.Tenant) -> str:
    return tenant_pb2.Tenant.State.Name(tenant.state).removeprefix("STATE_")


def _ids(names: Any) -> str:
    return ", ".join(name.rsplit("/", 1)[-1] for name in names) or "-"


def _show(tenant: tenant_pb2.Tenant, args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(json_format.MessageToDict(tenant)), flush=True)
        return
    rows = [
        ("name", tenant.name),
        ("display name", tenant.display_name or "-"),
        ("state", _state(tenant)),
        ("admins", _ids(tenant.admins)),
        ("personas", _ids(tenant.personas)),
        ("relationships", str(tenant.relationship_count)),
        ("constitution sha256", tenant.constitution_sha256 or "-"),
        ("created", tenant.create_time.ToJsonString() if tenant.HasField("create_time") else "-"),
    ]
    print("\n".join(f"{label + ':':<21}{value}" for label, value in rows), flush=True)


def _needs_mesh(action: str) -> CliError:
    return CliError(
        f"`skm tenants {action}` is for the mesh's operator: add --mesh (straight to svc_profiles, signed with the"
        " mesh key)"
    )


def run(
    args: argparse.Namespace, public: Callable[[], tuple[grpc.Channel, Any]], token_tenant: Callable[[], str]
) -> int:
    """`public()`: the channel to the public URL and the caller's auth metadata (asked only
    without --mesh); `token_tenant()`: the tenant of the caller's token."""
    if args.action == "create":
        return _create(args, public)
    if args.action == "list":
        return _list(args, public)
    tenant_id = args.tenant_id or token_tenant()
    stub, auth = _stub(args, public)
    reply = stub.GetTenant(
        tenant_service_pb2.GetTenantRequest(name=f"tenants/{tenant_id.removeprefix('tenants/')}"),
        timeout=10,
        metadata=auth("GetTenant"),
    )
    _show(reply.tenant, args)
    return 0


def _create(args: argparse.Namespace, public: Callable[[], tuple[grpc.Channel, Any]]) -> int:
    if not args.mesh:
        raise _needs_mesh("create")
    if not args.tenant_id:
        raise CliError("`skm tenants create` needs the tenant's id, e.g. skm tenants create t1 --admin alice --mesh")
    tenant_id = args.tenant_id.removeprefix("tenants/")
    if not args.admin:
        raise CliError("`skm tenants create` needs at least one --admin USER: the tenant's first admin")
    constitution = ""
    if args.constitution_file:
        try:
            constitution = Path(args.constitution_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"cannot read the constitution file: {exc}") from None
    admins = [a if a.startswith("tenants/") else f"tenants/{tenant_id}/users/{a}" for a in args.admin]
    stub, auth = _stub(args, public)
    _note(f"onboarding tenants/{tenant_id}: constitution, admins, tool risk levels, built-in personas...")
    reply = stub.CreateTenant(
        tenant_service_pb2.CreateTenantRequest(
            tenant_id=tenant_id,
            tenant=tenant_pb2.Tenant(display_name=args.display_name, admins=admins),
            constitution=constitution,
        ),
        timeout=60,
        metadata=auth("CreateTenant"),
    )
    tenant = reply.tenant
    _note(
        f"{tenant.name} is {_state(tenant)}: {tenant.relationship_count} relationships,"
        f" personas {_ids(tenant.personas)}"
    )
    _show(tenant, args)
    first = admins[0].rsplit("/", 1)[-1]
    _note(f"next: export SKM_TOKEN=$(skm token --tenant {tenant_id} --user {first} --role admin); skm chat")
    return 0


def _list(args: argparse.Namespace, public: Callable[[], tuple[grpc.Channel, Any]]) -> int:
    if not args.mesh:
        raise _needs_mesh("list")
    stub, auth = _stub(args, public)
    shown, token = 0, ""
    while True:  # every page
        reply = stub.ListTenants(
            tenant_service_pb2.ListTenantsRequest(page_size=1000, page_token=token),
            timeout=10,
            metadata=auth("ListTenants"),
        )
        for tenant in reply.tenants:
            if args.json:
                print(json.dumps(json_format.MessageToDict(tenant)), flush=True)
            else:
                print(f"{tenant.name:<30} {_state(tenant):<13} admins: {_ids(tenant.admins)}", flush=True)
        shown += len(reply.tenants)
        token = reply.next_page_token
        if not token:
            break
    if not shown and not args.json:
        _note("no tenant yet: onboard one with `skm tenants create ID --admin USER --mesh`")
    return 0


def add_parser(commands: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`skm tenants` on the top parser's subcommands."""
    tenants: argparse.ArgumentParser = commands.add_parser(
        "tenants",
        parents=[common],
        help="onboard a tenant (constitution, first admins, tools, personas), show one, list them",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tenants.add_argument("action", choices=("create", "show", "list"))
    tenants.add_argument(
        "tenant_id", nargs="?", default="", metavar="ID", help="the tenant, e.g. t1 (show: default the token's)"
    )
    tenants.add_argument(
        "--admin",
        action="append",
        metavar="USER",
        help="with create: a first admin, e.g. alice (or tenants/t1/users/alice); repeatable, at least one",
    )
    tenants.add_argument("--display-name", default="", help="with create: the name UIs show")
    tenants.add_argument(
        "--constitution-file",
        default="",
        metavar="FILE",
        help="with create: the tenant's constitution (default: the deployment's); written only if it has none",
    )
    tenants.add_argument(
        "--mesh", action="store_true", help="straight to svc_profiles, signed with the mesh key (no token)"
    )
    tenants.add_argument(
        "--mesh-key",
        default="",
        help=f"with --mesh: the mesh key file (default: ${MESH_KEY_FILE_VAR}, else the local stack's)",
    )
    tenants.add_argument(
        "--profiles-addr",
        default="",
        help=f"with --mesh: svc_profiles (default: $SKM_PROFILES_ADDR or {DEFAULT_PROFILES_ADDR})",
    )
    return tenants
