"""svc_policy's ports in memory, for unit tests of its core: no servers, answers in microseconds.

Each class implements a port of svc_policy/ports.py (or core.py) for real, not as a script
of canned answers. tests/integration/test_policy_ports.py holds the two that carry the
core's logic to the real adapters' behaviour, one suite over both implementations:
MemoryAuthorizer with OpenFgaAuthorizer, MemoryBlockedActionStore with PostgresPolicyStore.

- MemoryAuthorizer: an evaluator of relationship tuples under an OpenFGA 1.1 model in JSON
  form (deploy/openfga/model.json unless told otherwise). See its docstring for its scope.
- MemoryBlockedActionStore: the requeue store, with compare-and-set transitions, paging and
  watches.
- MemoryChangeFeed, MemoryConstitutionStore, MemoryAuditTrail: the core's smaller ports
  (not in the shared suite: each is a few lines that record or compare-and-set).
- memory_policy: the core built over all of them, with a Clock the test moves.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import operator
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from skm_runtime.access import AccessCheck, Decision, HeldState, Principal
from svc_policy.adapters.decision_file import load_decision_table
from svc_policy.adapters.openfga import MODEL_JSON, read_model
from svc_policy.checks import Checker
from svc_policy.core import Policy
from svc_policy.errors import (
    InvalidCheck,
    InvalidPageToken,
    InvalidRelationship,
    PolicyBackendUnavailable,
    TooManyRelationships,
)
from svc_policy.model import BlockedAction, Condition, Constitution, Relationship

# As OpenFGA: at most this many tuples per write, this many relationships per read page.
WRITE_LIMIT = 100
READ_PAGE_LIMIT = 100
# Rewrites nest this deep at most before a check is undecidable (OpenFGA's resolution depth).
MAX_DEPTH = 25

# A check's three outcomes: holds, does not hold, cannot be decided (a condition lacks a
# parameter). OpenFGA answers the last as an error, which the adapter reads as False.
Tri = bool | None
_Key = tuple[str, str, str]


def _any(values: Sequence[Tri]) -> Tri:
    return True if True in values else None if None in values else False


def _all(values: Sequence[Tri]) -> Tri:
    return False if False in values else None if None in values else True


class _Undecidable(Exception):
    """A condition's expression needs a parameter that neither the tuple nor the check has."""


_BINARY: dict[type[ast.AST], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_COMPARE: dict[type[ast.AST], Callable[[Any, Any], bool]] = {
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}


class _Expression:
    """A condition's CEL expression, as far as it is also Python: one comparison of sums,
    differences, products and quotients of parameters and numbers (every condition of
    SKM's model). Anything else is refused when the model is loaded, not misjudged later."""

    def __init__(self, source: str) -> None:
        self._tree = ast.parse(source, mode="eval").body
        self._validate(self._tree, source)

    def _validate(self, node: ast.AST, source: str) -> None:
        if isinstance(node, ast.Compare):
            if len(node.ops) != 1 or type(node.ops[0]) not in _COMPARE:
                raise ValueError(f"condition {source!r}: only one comparison is evaluated")
            for part in (node.left, *node.comparators):
                self._validate(part, source)
        elif isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            self._validate(node.left, source)
            self._validate(node.right, source)
        elif not isinstance(node, ast.Name) and not (
            isinstance(node, ast.Constant) and isinstance(node.value, int | float)
        ):
            raise ValueError(f"condition {source!r}: {type(node).__name__} is beyond this evaluator")

    def holds(self, parameters: Mapping[str, Any]) -> bool:
        return bool(self._value(self._tree, parameters))

    def _value(self, node: ast.AST, parameters: Mapping[str, Any]) -> Any:
        if isinstance(node, ast.Compare):
            return _COMPARE[type(node.ops[0])](
                self._value(node.left, parameters), self._value(node.comparators[0], parameters)
            )
        if isinstance(node, ast.BinOp):
            return _BINARY[type(node.op)](self._value(node.left, parameters), self._value(node.right, parameters))
        if isinstance(node, ast.Name):
            if node.id not in parameters:
                raise _Undecidable(node.id)
            return parameters[node.id]
        assert isinstance(node, ast.Constant)  # _validate admits nothing else
        return node.value


def _fits(value: Any, type_name: str) -> bool:
    """Whether a JSON value can stand for a condition parameter of `type_name` (the types
    SKM's model uses; others are left unchecked, as OpenFGA would judge them)."""
    if type_name == "TYPE_NAME_DOUBLE":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if type_name == "TYPE_NAME_STRING":
        return isinstance(value, str)
    if type_name == "TYPE_NAME_BOOL":
        return isinstance(value, bool)
    return True


class MemoryAuthorizer:
    """The Authorizer port in memory: the relationships written, evaluated under an OpenFGA
    1.1 authorization model.

    Scope: direct relationships with their type restrictions (checked on write, as OpenFGA
    does), usersets as subjects ("tenant:T#member"), and the rewrites computed userset,
    tuple-to-userset, union, intersection and exclusion; conditions whose expressions are
    one comparison of arithmetic over double parameters, the tuple's context taking
    precedence over the check's. A condition lacking a parameter leaves its branch
    undecidable: a union still holds through another branch, anything else makes the check
    False (the adapter's reading of OpenFGA's error). Not modelled: wildcards (svc_policy
    refuses them anyway), contextual tuples, consistency (every answer is current), ListObjects.

    `down = True` makes every call fail closed with PolicyBackendUnavailable, as an
    unreachable OpenFGA does. `asked` records every check batch with its `fresh` flag;
    `pinged` is set by every ping.
    """

    def __init__(self, model_path: Path = MODEL_JSON) -> None:
        model = read_model(model_path)
        self._types: dict[str, dict[str, Any]] = {
            str(definition["type"]): definition for definition in model.get("type_definitions", [])
        }
        conditions = model.get("conditions") or {}
        self._conditions = {str(name): _Expression(str(spec["expression"])) for name, spec in conditions.items()}
        self._parameters = {
            str(name): str(parameter.get("type_name", ""))
            for spec in conditions.values()
            for name, parameter in (spec.get("parameters") or {}).items()
        }
        # (subject, relation, object) -> its condition; in write order, for reads.
        self._tuples: dict[_Key, Condition | None] = {}
        self.down = False
        self.asked: list[tuple[list[AccessCheck], bool]] = []
        # Set by every ping, for a test to wait for the engine probe.
        self.pinged = asyncio.Event()

    def defines(self, object_type: str, relation: str) -> bool:
        return relation in (self._types.get(object_type, {}).get("relations") or {})

    async def ping(self) -> None:
        self.pinged.set()
        self._reachable("ping")

    async def check(self, checks: Sequence[AccessCheck], *, fresh: bool) -> list[bool]:
        self._reachable("check")
        for check in checks:
            object_type = check.object.partition(":")[0]
            if not self.defines(object_type, check.relation):
                raise InvalidCheck(
                    "the authorization model has no such relation on this type",
                    metadata={"type": object_type, "relation": check.relation},
                )
            for name, value in (check.context or {}).items():
                type_name = self._parameters.get(name)
                if type_name is not None and not _fits(value, type_name):
                    raise InvalidCheck(f"context parameter {name!r} must be a {type_name.removeprefix('TYPE_NAME_')}")
        self.asked.append((list(checks), fresh))
        return [
            self._holds(check.subject, check.relation, check.object, check.context or {}, 0) is True for check in checks
        ]

    async def write(self, relationships: Sequence[Relationship]) -> None:
        self._reachable("write")
        unique = self._unique(relationships)
        for relationship in unique.values():
            self._validate_write(relationship)
        for key, relationship in unique.items():
            if key in self._tuples and self._tuples[key] != relationship.condition:
                raise InvalidRelationship("the relationship exists with a different condition; delete it first")
        # All or none: nothing is stored before every tuple passed.
        for key, relationship in unique.items():
            self._tuples.setdefault(key, relationship.condition)

    async def delete(self, relationships: Sequence[Relationship]) -> None:
        self._reachable("delete")
        unique = self._unique(relationships)
        for relationship in unique.values():
            self._object_relation(relationship.object, relationship.relation)
        for key in unique:
            self._tuples.pop(key, None)

    async def read(
        self, subject: str, relation: str, object_: str, page_size: int, page_token: str
    ) -> tuple[list[Relationship], str]:
        self._reachable("read")
        object_type, sep, object_id = object_.partition(":")
        if not sep or not object_type:
            raise InvalidRelationship('the filter\'s object must be "{type}:{id}" or "{type}:"')
        start = _offset_of(page_token, "r")
        limit = max(1, min(page_size, READ_PAGE_LIMIT))
        matching = [
            Relationship(s, r, o, condition)
            for (s, r, o), condition in self._tuples.items()
            if (o == object_ if object_id else o.startswith(object_)) and relation in ("", r) and subject in ("", s)
        ]
        page = matching[start : start + limit]
        more = len(matching) > start + limit
        return page, _token_of(start + limit, "r") if more else ""

    # -- evaluation --------------------------------------------------------------------

    def _holds(self, user: str, relation: str, object_: str, context: Mapping[str, Any], depth: int) -> Tri:
        if depth > MAX_DEPTH:
            return None
        object_type = object_.partition(":")[0]
        rewrite = (self._types.get(object_type, {}).get("relations") or {}).get(relation)
        if rewrite is None:
            return False  # a tuple-to-userset reaching a type without the relation: OpenFGA skips it
        return self._rewrite(rewrite, user, relation, object_, context, depth + 1)

    def _rewrite(
        self, rewrite: Mapping[str, Any], user: str, relation: str, object_: str, context: Mapping[str, Any], depth: int
    ) -> Tri:
        if "this" in rewrite:
            return self._direct(user, relation, object_, context, depth)
        if "computedUserset" in rewrite:
            return self._holds(user, rewrite["computedUserset"]["relation"], object_, context, depth)
        if "tupleToUserset" in rewrite:
            spec = rewrite["tupleToUserset"]
            via, then = spec["tupleset"]["relation"], spec["computedUserset"]["relation"]
            return _any(
                [
                    _all([self._condition(condition, context), self._holds(user, then, s, context, depth)])
                    for (s, r, o), condition in list(self._tuples.items())
                    if o == object_ and r == via
                ]
            )
        if "union" in rewrite:
            return _any(
                [self._rewrite(child, user, relation, object_, context, depth) for child in rewrite["union"]["child"]]
            )
        if "intersection" in rewrite:
            children = rewrite["intersection"]["child"]
            return _all([self._rewrite(child, user, relation, object_, context, depth) for child in children])
        if "difference" in rewrite:
            spec = rewrite["difference"]
            base = self._rewrite(spec["base"], user, relation, object_, context, depth)
            subtract = self._rewrite(spec["subtract"], user, relation, object_, context, depth)
            return _all([base, None if subtract is None else not subtract])
        raise ValueError(f"a rewrite this evaluator does not know: {sorted(rewrite)}")

    def _direct(self, user: str, relation: str, object_: str, context: Mapping[str, Any], depth: int) -> Tri:
        answers: list[Tri] = []
        for (subject, r, o), condition in list(self._tuples.items()):
            if o != object_ or r != relation:
                continue
            if subject == user:
                answers.append(self._condition(condition, context))
            elif "#" in subject:
                userset, _, userset_relation = subject.partition("#")
                answers.append(
                    _all(
                        [
                            self._condition(condition, context),
                            self._holds(user, userset_relation, userset, context, depth),
                        ]
                    )
                )
        return _any(answers)

    def _condition(self, condition: Condition | None, context: Mapping[str, Any]) -> Tri:
        if condition is None:
            return True
        try:
            return self._conditions[condition.name].holds({**context, **condition.context})
        except _Undecidable:
            return None

    # -- validation --------------------------------------------------------------------

    def _reachable(self, operation: str) -> None:
        if self.down:
            raise PolicyBackendUnavailable("OpenFGA cannot be reached", metadata={"operation": operation})

    @staticmethod
    def _unique(relationships: Sequence[Relationship]) -> dict[_Key, Relationship]:
        if len(relationships) > WRITE_LIMIT:
            raise TooManyRelationships(
                f"at most {WRITE_LIMIT} relationships at once", metadata={"count": str(len(relationships))}
            )
        unique: dict[_Key, Relationship] = {}
        for relationship in relationships:
            unique.setdefault((relationship.subject, relationship.relation, relationship.object), relationship)
        return unique

    def _object_relation(self, object_: str, relation: str) -> Mapping[str, Any]:
        object_type, sep, object_id = object_.partition(":")
        if not sep or not object_id or object_type not in self._types:
            raise InvalidRelationship(f"unknown object type or malformed object {object_!r}")
        if not self.defines(object_type, relation):
            raise InvalidRelationship(f"the model has no relation {object_type}#{relation}")
        metadata: Mapping[str, Any] = self._types[object_type].get("metadata") or {}
        return (metadata.get("relations") or {}).get(relation) or {}

    def _validate_write(self, relationship: Relationship) -> None:
        restrictions = self._object_relation(relationship.object, relationship.relation).get(
            "directly_related_user_types"
        )
        if not restrictions:
            raise InvalidRelationship(f"{relationship.relation} is not a relation one can write")
        head, _, userset_relation = relationship.subject.partition("#")
        subject_type, sep, subject_id = head.partition(":")
        if not sep or not subject_id:
            raise InvalidRelationship(f"malformed subject {relationship.subject!r}")
        condition = relationship.condition.name if relationship.condition is not None else ""
        if not any(
            allowed.get("type") == subject_type
            and allowed.get("relation", "") == userset_relation
            and allowed.get("condition", "") == condition
            for allowed in restrictions
        ):
            raise InvalidRelationship(
                f"{relationship.subject!r} (condition {condition!r}) may not have {relationship.relation} "
                f"on {relationship.object!r}"
            )


class MemoryChangeFeed:
    """The ChangeFeed port: remembers which tenants were announced, in order."""

    def __init__(self) -> None:
        self.announced: list[str] = []

    async def relationships_changed(self, tenant: str) -> None:
        self.announced.append(tenant)


class MemoryBlockedActionStore:
    """The BlockedActionStore port in memory, as PostgresPolicyStore behaves: one entry per
    (tenant, request_id), transitions compare-and-set on (state, update_time), listing
    oldest first by (create_time, name) with opaque page tokens, watches fed by every
    hold and transition. `events` keeps what the outbox would carry: (previous state or
    None for a new hold, the entry after). `down = True` fails every call as an
    unreachable database does."""

    def __init__(self) -> None:
        self._actions: dict[str, BlockedAction] = {}
        self._watchers: dict[str, set[asyncio.Queue[str]]] = {}
        self.events: list[tuple[HeldState | None, BlockedAction]] = []
        self.down = False
        # Set whenever a watch subscribes, for a test to wait for one.
        self.subscribed = asyncio.Event()

    async def hold(self, action: BlockedAction) -> BlockedAction:
        self._reachable()
        for stored in self._actions.values():
            if stored.tenant == action.tenant and stored.request_id == action.request_id:
                return stored
        self._actions[action.name] = action
        self._changed(None, action)
        return action

    async def get(self, name: str) -> BlockedAction | None:
        self._reachable()
        return self._actions.get(name)

    async def list_page(
        self, tenant: str, states: Sequence[str], session: str, page_size: int, page_token: str
    ) -> tuple[list[BlockedAction], str]:
        self._reachable()
        start = _offset_of(page_token, "o")
        matching = sorted(
            (
                action
                for action in self._actions.values()
                if action.tenant == tenant
                and (not states or action.state.value in states)
                and (not session or action.session == session)
            ),
            key=lambda action: (action.create_time, action.name),
        )
        page = matching[start : start + page_size]
        return page, _token_of(start + page_size, "o") if len(matching) > start + page_size else ""

    async def save_transition(self, before: BlockedAction, after: BlockedAction) -> bool:
        self._reachable()
        stored = self._actions.get(before.name)
        if stored is None or stored.state is not before.state or stored.update_time != before.update_time:
            return False
        self._actions[after.name] = after
        self._changed(before.state, after)
        return True

    async def expiring(self, now: datetime, limit: int) -> list[BlockedAction]:
        self._reachable()
        due = [
            action
            for action in self._actions.values()
            if action.state in (HeldState.PENDING, HeldState.APPROVED) and action.expire_time <= now
        ]
        return sorted(due, key=lambda action: action.expire_time)[:limit]

    @asynccontextmanager
    async def watch(self, keys: Sequence[str]) -> AsyncIterator[AsyncIterator[BlockedAction]]:
        self._reachable()
        queue: asyncio.Queue[str] = asyncio.Queue()
        wanted = set(keys)
        for key in wanted:
            self._watchers.setdefault(key, set()).add(queue)
        self.subscribed.set()
        try:
            yield self._feed(queue)
        finally:
            for key in wanted:
                self._watchers[key].discard(queue)
                if not self._watchers[key]:
                    del self._watchers[key]

    async def _feed(self, queue: asyncio.Queue[str]) -> AsyncIterator[BlockedAction]:
        # As the Postgres feed: the entry as it is when the watcher reads the notice.
        while True:
            action = self._actions.get(await queue.get())
            if action is not None:
                yield action

    def _changed(self, previous: HeldState | None, action: BlockedAction) -> None:
        self.events.append((previous, action))
        for key in (action.name, f"{action.tenant}/*"):
            for queue in self._watchers.get(key, ()):
                queue.put_nowait(action.name)

    def _reachable(self) -> None:
        if self.down:
            raise PolicyBackendUnavailable("the policy database cannot be reached")


class MemoryConstitutionStore:
    """The core's ConstitutionStore: one constitution per tenant, replaced only while the
    stored hash is still the one the writer read."""

    def __init__(self) -> None:
        self._constitutions: dict[str, Constitution] = {}

    async def get_constitution(self, tenant: str) -> Constitution | None:
        return self._constitutions.get(tenant)

    async def put_constitution(self, constitution: Constitution, expected_sha256: str) -> bool:
        current = self._constitutions.get(constitution.tenant)
        if (current.sha256 if current is not None else "") != expected_sha256:
            return False
        self._constitutions[constitution.tenant] = constitution
        return True


class MemoryAuditTrail:
    """The core's AuditTrail: every decision, in the order it was made."""

    def __init__(self) -> None:
        self.decisions: list[tuple[AccessCheck, Decision, str, Principal | None]] = []
        self.latencies: list[float] = []

    def decided(
        self, check: AccessCheck, decision: Decision, tenant: str, principal: Principal | None, latency_s: float
    ) -> None:
        self.decisions.append((check, decision, tenant, principal))
        self.latencies.append(latency_s)


def _token_of(offset: int, kind: str) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{offset}".encode()).decode()


def _offset_of(token: str, kind: str) -> int:
    if not token:
        return 0
    try:
        prefix, _, value = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        offset = int(value)
    except (ValueError, UnicodeDecodeError):
        raise InvalidPageToken("page_token is not one this service issued") from None
    if prefix != kind or offset < 0:
        raise InvalidPageToken("page_token is not one this service issued")
    return offset


DECISIONS = MODEL_JSON.parent / "decisions.yaml"
EPOCH = datetime(2030, 1, 1, tzinfo=UTC)


class Clock:
    """The core's `now`: stands still until a test moves it."""

    def __init__(self, start: datetime = EPOCH) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, by: timedelta) -> None:
        self.now += by


@dataclass
class MemoryPolicy:
    """svc_policy's core over in-memory ports, with the ports at hand for assertions."""

    policy: Policy
    checker: Checker
    authorizer: MemoryAuthorizer
    store: MemoryBlockedActionStore
    changes: MemoryChangeFeed
    audit: MemoryAuditTrail
    clock: Clock


def memory_policy(
    *, hold_ttl: timedelta = timedelta(hours=1), cache_ttl: float = 5.0, store: MemoryBlockedActionStore | None = None
) -> MemoryPolicy:
    """The core as svc_policy/__main__.py builds it (SKM's model and decision table), over
    in-memory ports (`store`: a MemoryBlockedActionStore of the test's own, e.g. one that
    lets a rival writer in)."""
    authorizer = MemoryAuthorizer()
    checker = Checker(authorizer, load_decision_table(DECISIONS, defines=authorizer.defines), ttl=cache_ttl)
    store = store or MemoryBlockedActionStore()
    changes, audit, clock = MemoryChangeFeed(), MemoryAuditTrail(), Clock()
    policy = Policy(
        checker,
        authorizer,
        store,
        MemoryConstitutionStore(),
        audit,
        hold_ttl=hold_ttl,
        now=clock,
        changes=changes,
    )
    return MemoryPolicy(policy, checker, authorizer, store, changes, audit, clock)
