"""The capsule file: a versioned set of eval items, one JSON object a line.

The first line is the set's header, every other line an item::

    {"capsule_set": "skm-capsules", "version": "v1", "description": "..."}
    {"id": "exact-capital-france", "kind": "exact", "difficulty": "easy", "prompt": "...", "answers": ["Paris"]}

Fields of every item: ``id`` (unique, ``[a-z0-9-]``), ``kind`` (one of KINDS), ``difficulty``
(easy, medium or hard: easy items are ones every real model should pass), ``prompt`` (the
user's message), ``notes`` (optional, for people). Per kind:

- exact: ``answers``, the accepted answers (aliases), compared after normalisation;
- json_schema: ``schema`` (a JSON schema the reply must validate against) and ``checks``
  (predicates on the parsed reply, may be empty);
- tool_choice: ``exchanges`` (optional: earlier tool calls of the turn and their results),
  ``tool`` (the tool the reply must call) and ``checks`` (predicates on its arguments);
- injection: ``exchanges`` (optional, as above), ``forbidden`` (strings the reply must not
  contain) and ``forbidden_calls`` (``{"tool": ..., "checks": [...]}``: calls the reply must
  not make); at least one of the two.

An exchange is ``{"call": {"tool_name": ..., "tool_args": {...}, "thoughts": [...]}, "result":
<the tool's result as the model sees it>}``. A predicate is ``{"path": "a.b.0", <one
operator>: <operand>}``; see evals.checks for the operators. Everything is checked when the
file is loaded, so a typo fails the run before any model is called.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evals.checks import OPERATORS, Predicate, predicate_problem

KINDS = ("exact", "json_schema", "tool_choice", "injection")
DIFFICULTIES = ("easy", "medium", "hard")
CAPSULES_DIR = Path(__file__).resolve().parent / "capsules"
DEFAULT_CAPSULES = CAPSULES_DIR / "v1.jsonl"

_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,79}$")
_COMMON = {"id", "kind", "difficulty", "prompt", "notes"}
_FIELDS = {
    "exact": _COMMON | {"answers"},
    "json_schema": _COMMON | {"schema", "checks"},
    "tool_choice": _COMMON | {"exchanges", "tool", "checks"},
    "injection": _COMMON | {"exchanges", "forbidden", "forbidden_calls"},
}
_HEADER_FIELDS = {"capsule_set", "version", "description"}


class CapsuleError(Exception):
    """The capsule file is not a valid capsule set; ``problems`` lists every problem found."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True, slots=True)
class Exchange:
    """A tool call of the model earlier in the turn, and the result it got back."""

    tool_name: str
    tool_args: Mapping[str, Any]
    thoughts: tuple[str, ...]
    result: Any


@dataclass(frozen=True, slots=True)
class ForbiddenCall:
    """A call that would carry out an injected instruction: this tool with these arguments."""

    tool: str
    checks: tuple[Predicate, ...] = ()


@dataclass(frozen=True, slots=True)
class Capsule:
    """One eval item (the fields a kind does not use stay empty)."""

    id: str
    kind: str
    difficulty: str
    prompt: str
    answers: tuple[str, ...] = ()
    schema: Mapping[str, Any] = field(default_factory=dict)
    checks: tuple[Predicate, ...] = ()
    exchanges: tuple[Exchange, ...] = ()
    tool: str = ""
    forbidden: tuple[str, ...] = ()
    forbidden_calls: tuple[ForbiddenCall, ...] = ()


@dataclass(frozen=True, slots=True)
class CapsuleSet:
    """A loaded capsule file: its header, its items in file order, and the file's digest."""

    name: str
    version: str
    description: str
    path: Path
    sha256: str
    items: tuple[Capsule, ...]

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds present, in KINDS order."""
        present = {item.kind for item in self.items}
        return tuple(kind for kind in KINDS if kind in present)


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)


def _predicates(value: Any, where: str, problems: list[str]) -> tuple[Predicate, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        problems.append(f"{where}: a list of predicates")
        return ()
    out = []
    for index, entry in enumerate(value):
        problem = predicate_problem(entry)
        if problem:
            problems.append(f"{where}[{index}]: {problem} (operators: {', '.join(OPERATORS)})")
        else:
            out.append(Predicate.of(entry))
    return tuple(out)


def _exchanges(value: Any, where: str, problems: list[str]) -> tuple[Exchange, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        problems.append(f"{where}: a list of {{call, result}}")
        return ()
    out = []
    for index, entry in enumerate(value):
        call = entry.get("call") if isinstance(entry, dict) else None
        if (
            not isinstance(entry, dict)
            or set(entry) != {"call", "result"}
            or not isinstance(call, dict)
            or not isinstance(call.get("tool_name"), str)
            or not isinstance(call.get("tool_args"), dict)
            or not set(call) <= {"tool_name", "tool_args", "thoughts"}
            or not _strings(call.get("thoughts", []))
        ):
            problems.append(f"{where}[{index}]: expected {{call: {{tool_name, tool_args, thoughts}}, result}}")
            continue
        out.append(Exchange(call["tool_name"], call["tool_args"], tuple(call.get("thoughts", ())), entry["result"]))
    return tuple(out)


def _forbidden_calls(value: Any, where: str, problems: list[str]) -> tuple[ForbiddenCall, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        problems.append(f"{where}: a list of {{tool, checks}}")
        return ()
    out = []
    for index, entry in enumerate(value):
        if not isinstance(entry, dict) or not isinstance(entry.get("tool"), str) or set(entry) - {"tool", "checks"}:
            problems.append(f"{where}[{index}]: expected {{tool, checks}}")
            continue
        out.append(ForbiddenCall(entry["tool"], _predicates(entry.get("checks"), f"{where}[{index}].checks", problems)))
    return tuple(out)


def _schema_problem(schema: Any) -> str:
    import jsonschema  # type: ignore[import-untyped]  # jsonschema ships no type information

    if not isinstance(schema, dict):
        return "schema: a JSON schema object"
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as error:
        return f"schema: not a valid JSON schema ({error.message})"
    return ""


def parse_item(entry: Any, where: str, problems: list[str]) -> Capsule | None:
    """One item line's object as a Capsule; its problems are added to ``problems``."""
    if not isinstance(entry, dict):
        problems.append(f"{where}: expected an object")
        return None
    before = len(problems)
    kind = entry.get("kind")
    if kind not in KINDS:
        problems.append(f"{where}: kind {kind!r} is not one of {', '.join(KINDS)}")
        return None
    unknown = set(entry) - _FIELDS[kind]
    if unknown:
        problems.append(f"{where}: fields not used by {kind}: {', '.join(sorted(unknown))}")
    item_id = entry.get("id")
    if not isinstance(item_id, str) or not _ID.match(item_id):
        problems.append(f"{where}: id must match {_ID.pattern}")
    if entry.get("difficulty") not in DIFFICULTIES:
        problems.append(f"{where}: difficulty must be one of {', '.join(DIFFICULTIES)}")
    if not isinstance(entry.get("prompt"), str) or not entry["prompt"].strip():
        problems.append(f"{where}: prompt must be a non-empty string")
    item = Capsule(
        id=str(item_id),
        kind=kind,
        difficulty=str(entry.get("difficulty")),
        prompt=str(entry.get("prompt")),
        checks=_predicates(entry.get("checks"), f"{where}.checks", problems),
        exchanges=_exchanges(entry.get("exchanges"), f"{where}.exchanges", problems),
        forbidden_calls=_forbidden_calls(entry.get("forbidden_calls"), f"{where}.forbidden_calls", problems),
    )
    if kind == "exact":
        if not _strings(entry.get("answers")) or not entry["answers"]:
            problems.append(f"{where}: answers must be a non-empty list of strings")
        else:
            item = dataclasses.replace(item, answers=tuple(entry["answers"]))
    elif kind == "json_schema":
        problem = _schema_problem(entry.get("schema"))
        if problem:
            problems.append(f"{where}: {problem}")
        else:
            item = dataclasses.replace(item, schema=entry["schema"])
    elif kind == "tool_choice":
        if not isinstance(entry.get("tool"), str) or not entry["tool"]:
            problems.append(f"{where}: tool must name the tool the reply must call")
        else:
            item = dataclasses.replace(item, tool=entry["tool"])
    else:
        forbidden = entry.get("forbidden", [])
        if not _strings(forbidden):
            problems.append(f"{where}: forbidden must be a list of non-empty strings")
        elif not forbidden and not item.forbidden_calls:
            problems.append(f"{where}: an injection item needs forbidden strings or forbidden_calls")
        else:
            item = dataclasses.replace(item, forbidden=tuple(forbidden))
    return item if len(problems) == before else None


def parse_capsules(text: str, path: Path) -> CapsuleSet:
    """The capsule set in ``text`` (the file at ``path``); CapsuleError lists every problem."""
    problems: list[str] = []
    lines = [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        raise CapsuleError(str(path), ["empty: expected a header line and items"])
    entries = []
    for number, line in lines:
        try:
            entries.append((number, json.loads(line)))
        except ValueError as error:
            problems.append(f"line {number}: not JSON ({error})")
    if problems:
        raise CapsuleError(str(path), problems)
    (_, header), items = entries[0], entries[1:]
    if (
        not isinstance(header, dict)
        or set(header) != _HEADER_FIELDS
        or not all(isinstance(header[key], str) and header[key] for key in _HEADER_FIELDS)
    ):
        raise CapsuleError(str(path), [f"line 1: the header must be {{{', '.join(sorted(_HEADER_FIELDS))}}}"])
    capsules = []
    seen: set[str] = set()
    for number, entry in items:
        capsule = parse_item(entry, f"line {number}", problems)
        if capsule is None:
            continue
        if capsule.id in seen:
            problems.append(f"line {number}: id {capsule.id} is used twice")
        seen.add(capsule.id)
        capsules.append(capsule)
    if not capsules and not problems:
        problems.append("no items")
    if problems:
        raise CapsuleError(str(path), problems)
    return CapsuleSet(
        name=header["capsule_set"],
        version=header["version"],
        description=header["description"],
        path=path,
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        items=tuple(capsules),
    )


def load_capsules(path: Path = DEFAULT_CAPSULES) -> CapsuleSet:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CapsuleError(str(path), [f"cannot be read: {error.strerror or error}"]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CapsuleError(str(path), ["not UTF-8"]) from None
    return parse_capsules(text, path)


def select(
    items: Sequence[Capsule],
    *,
    kinds: Sequence[str] = (),
    ids: Sequence[str] = (),
    limit: int | None = None,
) -> tuple[Capsule, ...]:
    """The items to run, in file order: of ``kinds`` and ``ids`` (empty: all), and at most
    ``limit`` of them, taken evenly across the kinds (round-robin in file order) so that a
    small subset still mixes every kind."""
    chosen = [item for item in items if (not kinds or item.kind in kinds) and (not ids or item.id in ids)]
    if limit is None or limit >= len(chosen):
        return tuple(chosen)
    queues = {kind: [item for item in chosen if item.kind == kind] for kind in KINDS}
    picked: set[str] = set()
    while len(picked) < limit:
        for kind in KINDS:
            if queues[kind] and len(picked) < limit:
                picked.add(queues[kind].pop(0).id)
    return tuple(item for item in chosen if item.id in picked)
