"""A task that outlives the call being served keeps the trace, not the call's deadline or the
principal the call was admitted with."""

from __future__ import annotations

import time

from skm.type.v1 import principal_pb2
from skm_runtime import interceptors


def test_a_task_outliving_a_public_call_is_no_public_call_itself() -> None:
    admitted = principal_pb2.Principal(tenant="tenants/t1", user="tenants/t1/users/olga")
    deadline = interceptors._inbound_deadline.set(time.monotonic() + 1.0)
    token = interceptors._admitted.set(admitted)
    try:
        assert interceptors.admitted_from_outside()
        outliving = interceptors.outliving_context()
        assert not outliving.run(interceptors.admitted_from_outside)
        assert outliving.run(interceptors._inbound_deadline.get) is None
        assert interceptors.admitted_from_outside(), "the call itself keeps its principal"
    finally:
        interceptors._admitted.reset(token)
        interceptors._inbound_deadline.reset(deadline)
