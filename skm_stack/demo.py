"""The demo tenant `make run` onboards, so that a new user's first `skm chat` works.

After the services are up, `python -m skm_stack up` asks svc_profiles to create tenant
`demo` with `admin` as its first admin (TenantService.CreateTenant, as the mesh's operator:
each call signed with the stack's mesh key). Onboarding is idempotent, so this runs on every
start: the first writes the tenant's constitution, admin, tool risk levels and the built-in
personas' permissions; later ones find it ACTIVE and change nothing. `skm token` mints for
this tenant unless told otherwise.

The test suite's stacks do not onboard it: each test creates the tenants it needs.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from skm.profiles.v1 import tenant_pb2, tenant_service_pb2, tenant_service_pb2_grpc
from skm_runtime.principal import caller_metadata, configure_mesh_key, use_caller_name

DEMO_TENANT = "demo"
DEMO_ADMIN = "admin"
_CREATE = "/skm.profiles.v1.TenantService/CreateTenant"


def onboard_demo(profiles_addr: str, mesh_key_file: Path) -> tenant_pb2.Tenant:
    """Create (or find) the demo tenant; raises grpc.RpcError when svc_profiles refuses or
    cannot finish (the tenant then stays PROVISIONING until the next start)."""
    configure_mesh_key(mesh_key_file)
    use_caller_name("skm-stack")
    with grpc.insecure_channel(profiles_addr) as channel:
        reply = tenant_service_pb2_grpc.TenantServiceStub(channel).CreateTenant(
            tenant_service_pb2.CreateTenantRequest(
                tenant_id=DEMO_TENANT,
                tenant=tenant_pb2.Tenant(display_name="Demo", admins=[f"tenants/{DEMO_TENANT}/users/{DEMO_ADMIN}"]),
            ),
            timeout=60,
            metadata=caller_metadata(_CREATE),
        )
    return reply.tenant


def how_to_use(skm: str = ".venv/bin/skm") -> str:
    """The lines `make run` prints under its summary."""
    return "\n".join(
        [
            f"Demo tenant `{DEMO_TENANT}` is ready; its admin is `{DEMO_ADMIN}`. Talk with the agent:",
            f"  export SKM_TOKEN=$({skm} token --user {DEMO_ADMIN} --role admin)",
            f'  {skm} chat -m "What is the capital of France?"',
            f"  {skm} tool list    # the tools; `{skm} tenants --help` onboards tenants of your own",
            'Or open the browser UI (above) and choose "Sign in as the demo admin".',
        ]
    )
