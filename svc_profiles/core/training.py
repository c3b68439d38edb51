"""Training mode: exchanges an operator marked in DEVELOPER-mode sessions become examples of a
persona, as a new revision with its lineage.

Each marked turn is read from svc_conversation as the operator (so the operator's own access
to the session applies) and must belong to a session in DEVELOPER mode that runs this persona
(any revision of it) and have COMPLETED: its user message and final answer are appended to the
persona's examples, oldest kept first, at most `checks.MAX_EXAMPLES` in all. The new revision
(origin TRAINING, author the operator) is unsigned: what was signed is no longer what runs, so
it runs in DEVELOPER mode until a publisher signs it again. Its lineage names the persona and
revision it was derived from, that revision's bundle digest, the sessions and the operator.

Every turn is checked before anything is written: one turn that cannot train the persona
refuses the whole request.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from skm_runtime.access import Principal
from skm_runtime.errors import FieldViolation
from skm_runtime.values import DeploymentMode
from svc_profiles import checks
from svc_profiles.bundle import bundle_digest
from svc_profiles.core.profiles import Profiles
from svc_profiles.core.revisions import author_of, split_revision
from svc_profiles.errors import EtagMismatch, InvalidPersona, InvalidResourceName, PersonaNotFound, TrainingNotAllowed
from svc_profiles.model import Exchange, Lineage, Persona, PersonaExample, RevisionOrigin
from svc_profiles.ports import Conversations

TRAINING_NOTE = "{count} example(s) from {sessions} session(s)"


class Training:
    """TrainPersona over the persona use cases and svc_conversation's turns."""

    def __init__(self, profiles: Profiles, conversations: Conversations) -> None:
        self._profiles = profiles
        self._conversations = conversations

    async def train_persona(self, name: str, turns: Sequence[str], etag: str, principal: Principal | None) -> Persona:
        if principal is None or not principal.user:
            # The operator is the lineage's author and the reader of the sessions.
            raise TrainingNotAllowed("training needs an operator: a call made by a user", metadata={"persona": name})
        tenant, _ = checks.split_persona(name)
        if principal.tenant != tenant:
            raise PersonaNotFound("no such persona", metadata={"persona": name[:200]})
        violations = _turns_violations(turns, tenant)
        if violations:
            raise InvalidPersona("the turns to train on are invalid", violations=violations)
        current = await self._profiles.get_persona(name, principal)
        if etag and etag != current.etag:
            raise EtagMismatch("the persona changed since it was read", metadata={"persona": name})
        exchanges = [await self._exchange(turn, name, principal) for turn in turns]
        examples = current.examples + tuple(PersonaExample(e.user_text, e.agent_text, e.turn) for e in exchanges)
        if len(examples) > checks.MAX_EXAMPLES:
            raise InvalidPersona(
                f"a persona holds at most {checks.MAX_EXAMPLES} examples",
                violations=[
                    FieldViolation("turns", f"{len(current.examples)} examples already, {len(exchanges)} more asked")
                ],
            )
        sessions = tuple(dict.fromkeys(e.session for e in exchanges))
        after = dataclasses.replace(
            current,
            examples=examples,
            lineage=Lineage(
                parent_persona=name,
                parent_bundle_digest=current.bundle_digest,
                training_sessions=sessions,
                operator=principal.user,
                parent_revision_id=current.revision.revision_id if current.revision is not None else "",
            ),
            signature=b"",
            signing_key="",
        )
        problems = checks.persona_violations(after, tenant)
        if problems:
            raise InvalidPersona("the trained persona is invalid", violations=problems)
        after = dataclasses.replace(after, bundle_digest=bundle_digest(after))
        return await self._profiles.revise_persona(
            current,
            after,
            RevisionOrigin.TRAINING,
            author_of(principal, ""),
            TRAINING_NOTE.format(count=len(exchanges), sessions=len(sessions)),
        )

    async def _exchange(self, turn: str, persona: str, principal: Principal) -> Exchange:
        exchange = await self._conversations.exchange(turn, principal)
        why = ""
        if exchange.mode is not DeploymentMode.DEVELOPER:
            why = "its session is not in DEVELOPER mode"
        elif split_revision(exchange.persona)[0] != persona:
            why = "its session runs another persona"
        elif not exchange.completed:
            why = "the turn did not complete"
        elif not exchange.user_text.strip() or not exchange.agent_text.strip():
            why = "the turn has no user message or no answer"
        if why:
            raise TrainingNotAllowed(
                f"turn {turn[:200]} cannot train this persona: {why}", metadata={"turn": turn[:300], "why": why}
            )
        return exchange


def _turns_violations(turns: Sequence[str], tenant: str) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    if not 1 <= len(turns) <= checks.MAX_EXAMPLES:
        out.append(FieldViolation("turns", f"1 to {checks.MAX_EXAMPLES} turns"))
    for index, turn in enumerate(turns):
        session, _, turn_id = turn.partition("/turns/")
        try:
            owner = checks.split_child(session, "sessions")[0]
        except InvalidResourceName:
            owner = ""
        if owner != tenant or not checks.is_segment(turn_id):
            out.append(FieldViolation(f"turns[{index}]", f"expected {tenant}/sessions/{{session}}/turns/{{turn}}"))
    if len(set(turns)) != len(turns):
        out.append(FieldViolation("turns", "a turn is named twice"))
    return out
