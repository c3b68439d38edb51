"""The whole mesh for end-to-end tests: the real servers, all seven services, Envoy in front."""

from __future__ import annotations

from dataclasses import replace

import pytest

from skm_runtime.contract import services_of
from skm_stack import RunningStack
from skm_stack.services import default_services

# A short agent loop (the untrained models never finish on their own before the bound)
# and a short lease, so a killed svc_conversation's turns are taken over quickly.
_EXTRA_ENV = {
    "conversation": {"SKM_CONVERSATION_MAX_ITERATIONS": "3", "SKM_CONVERSATION_LEASE_SECONDS": "3"},
}


@pytest.fixture(scope="session")
def mesh(stack: RunningStack) -> RunningStack:
    """The session's stack with every service (free ports) and Envoy started on it.

    They are stopped, with the servers, when the session's stack stops.
    """
    specs = [
        replace(
            spec,
            port=0,
            health_services=("", *services_of(spec.name)),
            extra_env=_EXTRA_ENV.get(spec.name, {}),
        )
        for spec in default_services(env={})
    ]
    stack.start_services(specs)
    stack.start_envoy()
    return stack
