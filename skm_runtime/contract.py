"""What the generated contract says about the mesh: which SKM service owns each gRPC service.

Read from the descriptors of every generated `skm.*` module (the `skm.options.v1.owner`
service option), so a service added in proto/ is routed, health-checked and listed without
code elsewhere.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message

import skm
from skm.options.v1 import authz_pb2


@functools.cache
def service_owners() -> Mapping[str, str]:
    """Full gRPC service name -> owning SKM service (e.g. "conversation"); read once."""
    owners: dict[str, str] = {}
    for module_info in pkgutil.walk_packages(skm.__path__, "skm."):
        if not module_info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(module_info.name)
        for service in module.DESCRIPTOR.services_by_name.values():
            owner = service.GetOptions().Extensions[authz_pb2.owner]
            if owner:
                owners[service.full_name] = owner
    return MappingProxyType(owners)


def services_of(owner: str) -> tuple[str, ...]:
    """The full gRPC service names one SKM service serves, sorted."""
    return tuple(sorted(name for name, who in service_owners().items() if who == owner))


@dataclass(frozen=True, slots=True)
class Method:
    """One RPC of the contract: who owns it, its kind, its request type, its authz rule."""

    path: str  # "/skm.conversation.v1.ConversationService/CreateSession"
    owner: str
    client_streaming: bool
    server_streaming: bool
    request_type: type[Message]
    # The method's `skm.options.v1.authz` rule; None for an internal method.
    authz: authz_pb2.AuthzRule | None


@functools.cache
def methods() -> Mapping[str, Method]:
    """Every method of every owned service, by path."""
    service_owners()  # imports every generated module
    found: dict[str, Method] = {}
    pool = descriptor_pool.Default()
    for service_name, owner in service_owners().items():
        service = pool.FindServiceByName(service_name)
        for method in service.methods:
            options = method.GetOptions()
            rule = options.Extensions[authz_pb2.authz] if options.HasExtension(authz_pb2.authz) else None
            path = f"/{service.full_name}/{method.name}"
            found[path] = Method(
                path,
                owner,
                method.client_streaming,
                method.server_streaming,
                message_factory.GetMessageClass(method.input_type),
                rule,
            )
    return MappingProxyType(found)
