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
from types import MappingProxyType

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
