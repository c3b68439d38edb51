"""Sessions: created in the caller's tenant for a persona, listed, renamed, re-tuned,
acknowledged and deleted."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

from skm_runtime.access import AccessCheck, Principal, Verdict
from skm_runtime.errors import FieldViolation
from skm_runtime.values import DeploymentMode
from svc_conversation.core.handles import Handles, now
from svc_conversation.core.lookups import Lookups
from svc_conversation.core.mirror import Mirror
from svc_conversation.core.names import caller, page_size, page_token, session_name, token_of
from svc_conversation.core.turns import Turns
from svc_conversation.errors import (
    DependencyUnavailable,
    EtagMismatch,
    InvalidPageToken,
    InvalidSession,
    InvalidUpdateMask,
    PermissionDenied,
    PersonaNotSigned,
)
from svc_conversation.model import Session, SessionState, split_name
from svc_conversation.ports import PolicyGate, SessionStore

_UPDATABLE = {"display_name", "model_overrides"}


def _violations(session: Session, parent: str, request_id: str) -> list[FieldViolation]:
    violations = []
    if not session.persona.startswith(f"{parent}/personas/") or session.persona.count("/") != 3:
        violations.append(FieldViolation("session.persona", f"required: a persona of {parent}"))
    if session.mode is None:
        violations.append(FieldViolation("session.mode", "required"))
    if len(session.display_name) > 200:
        violations.append(FieldViolation("session.display_name", "at most 200 characters"))
    roles = [o.role for o in session.model_overrides]
    if len(roles) != len(set(roles)):
        violations.append(FieldViolation("session.model_overrides", "at most one override per role"))
    if request_id:
        try:
            uuid.UUID(request_id)
        except ValueError:
            violations.append(FieldViolation("request_id", "a UUID"))
    return violations


class Sessions:
    def __init__(
        self,
        store: SessionStore,
        handles: Handles,
        lookups: Lookups,
        policy: PolicyGate,
        mirror: Mirror,
        turns: Turns,
    ) -> None:
        self._store = store
        self._handles = handles
        self._lookups = lookups
        self._policy = policy
        self._mirror = mirror
        self._turns = turns

    async def create_session(
        self,
        principal: Principal | None,
        parent: str,
        session: Session,
        request_id: str,
        *,
        superior: str = "",
        persona_revision: str = "",
    ) -> Session:
        """A new session on the persona's current revision, which it keeps for every turn
        (`persona_revision`: on that revision instead, as a subordinate runs on its
        superior's)."""
        principal = caller(principal)
        if parent != principal.tenant:
            raise PermissionDenied("sessions are created in the caller's own tenant", metadata={"parent": parent})
        violations = _violations(session, parent, request_id)
        if violations:
            raise InvalidSession("the session is not valid", violations=violations)
        if persona_revision:
            persona = await self._lookups.persona(f"{session.persona}@{persona_revision}", principal)
        else:
            persona = await self._lookups.current_persona(session.persona, principal)
        if session.mode != DeploymentMode.DEVELOPER and not persona.signed:
            raise PersonaNotSigned(
                "only signed personas run in TEST and PRODUCTION mode", metadata={"persona": session.persona}
            )
        name = f"{parent}/sessions/{uuid.uuid4().hex}"
        created_at = now()
        created = replace(
            session,
            name=name,
            persona_bundle_digest=persona.bundle_digest,
            persona_revision_id=persona.revision_id,
            state=SessionState.IDLE,
            owner=principal.user,
            superior_session=superior,
            current_turn="",
            last_sequence=0,
            acknowledged_sequence=0,
            create_time=created_at,
            update_time=created_at,
            etag=uuid.uuid4().hex,
        )
        # The owner relationship first: without it nobody could use the session, and a
        # session row that fails to follow leaves only a harmless tuple behind.
        await self._policy.own_session(principal, name)
        stored, _ = await self._store.create_session(created, request_id or None)
        return stored

    async def get_session(self, principal: Principal | None, name: str) -> Session:
        _, name = session_name(principal, name)
        handle = await self._handles.get(name)
        # Where no turn runs here, another process may have written the session since.
        await self._handles.refresh(handle, lock=True)
        return handle.session

    async def list_sessions(
        self, principal: Principal | None, parent: str, size: int, token: str
    ) -> tuple[list[Session], str]:
        principal = caller(principal)
        if parent != principal.tenant:
            raise PermissionDenied("sessions are listed in the caller's own tenant", metadata={"parent": parent})
        size = page_size(size, 50)
        after = None
        if token:
            value = page_token(token)
            try:
                after = (datetime.fromisoformat(str(value["t"])), str(value["id"]))
            except (KeyError, ValueError):
                raise InvalidPageToken("the page token is not one this service issued") from None
        operator = await self._operates(principal, parent)
        sessions = await self._store.list_sessions(parent, None if operator else principal.user, size + 1, after)
        next_token = ""
        if len(sessions) > size:
            sessions = sessions[:size]
            last = sessions[-1]
            stamp = (last.update_time or datetime.fromtimestamp(0, UTC)).astimezone(UTC)
            next_token = token_of({"t": stamp.isoformat(), "id": split_name(last.name)[1]})
        return sessions, next_token

    async def _operates(self, principal: Principal, tenant: str) -> bool:
        """Whether policy says the caller operates the tenant (not the token's roles). When
        svc_policy cannot answer, the caller sees only their own sessions."""
        check = AccessCheck(f"user:{principal.user}", "can_operate", f"tenant:{tenant}")
        try:
            decision = await self._policy.check(principal, check)
        except DependencyUnavailable:
            return False
        return decision.verdict == Verdict.ALLOW

    async def update_session(self, principal: Principal | None, session: Session, paths: Sequence[str]) -> Session:
        _, name = session_name(principal, session.name)
        handle = await self._handles.get(name)
        if not paths or not set(paths) <= _UPDATABLE:
            raise InvalidUpdateMask(f"update_mask must name some of {sorted(_UPDATABLE)}")
        if len(session.display_name) > 200:
            raise InvalidSession(
                "display_name is too long", violations=[FieldViolation("session.display_name", "at most 200")]
            )
        async with handle.lock:
            # Where no turn runs here, another process may have written the session since.
            await self._handles.refresh(handle)
            if session.etag and session.etag != handle.session.etag:
                raise EtagMismatch("the session changed since it was read", metadata={"etag": handle.session.etag})
            updated = handle.session
            if "display_name" in paths:
                updated = replace(updated, display_name=session.display_name)
            if "model_overrides" in paths:
                roles = [o.role for o in session.model_overrides]
                if len(roles) != len(set(roles)):
                    raise InvalidSession(
                        "at most one override per role",
                        violations=[FieldViolation("session.model_overrides", "one per role")],
                    )
                updated = replace(updated, model_overrides=session.model_overrides)
            updated = replace(updated, update_time=now(), etag=uuid.uuid4().hex)
        await handle.save_session(updated)
        self._mirror.soon(handle)
        return updated

    async def delete_session(self, principal: Principal | None, name: str, etag: str) -> None:
        _, name = session_name(principal, name)
        handle = await self._handles.get(name)
        if etag and etag != handle.session.etag:
            raise EtagMismatch("the session changed since it was read", metadata={"etag": handle.session.etag})
        if handle.active_turn() is not None:
            await self._turns.stop_runner(handle)
        handle.deleted = True
        await self._store.delete_session(handle.name)
        handle.close_streams("DELETED")
        self._handles.drop(handle.name)
        await self._mirror.forget(handle.name)

    async def acknowledge(self, principal: Principal | None, name: str, sequence: int) -> None:
        """Records that the client has the session's events up to ``sequence``: a stream
        attached without after_sequence starts after it."""
        _, name = session_name(principal, name)
        handle = await self._handles.get(name, fresh=True)
        if sequence <= handle.session.acknowledged_sequence:
            return
        acknowledged = min(sequence, handle.session.last_sequence)
        await handle.save_session(replace(handle.session, acknowledged_sequence=acknowledged))
