"""Revisions of personas and model profiles: the rules every versioned change follows.

Every change of a stored persona or model profile is a new revision, numbered "1", "2", ...
per resource, and the store records the whole resource as it was with it, in the same
transaction as the change (so history and state never disagree). A rollback is one more
revision holding an earlier one's values: history is never rewritten. A revision is read as
"{name}@{revision_id}"; sessions pin the revision of their persona so.

The use cases live on `Profiles` (`core/profiles.py`); this module holds what they share:
parsing "{name}@{revision_id}", numbering, authors and the auto-select bounds' rules.
"""

from __future__ import annotations

import re
from datetime import datetime

from skm_runtime.access import Principal
from skm_runtime.errors import FieldViolation
from svc_profiles.errors import InvalidResourceName
from svc_profiles.model import AutoSelectBounds, Revision, RevisionOrigin

# A revision id as a name carries it: a positive decimal number, no leading zero.
_REVISION_ID = re.compile(r"[1-9][0-9]{0,17}")

ROLLBACK_NOTE = "rollback to revision {revision_id}"
USD = "USD"


def split_revision(name: str) -> tuple[str, int | None]:
    """ "{name}@{revision_id}" -> (name, revision id); a name without "@" -> (name, None)."""
    base, at, revision = name.partition("@")
    if not at:
        return name, None
    if not _REVISION_ID.fullmatch(revision):
        raise InvalidResourceName(
            "expected {name}@{revision_id}, the revision id a positive number", metadata={"name": name[:200]}
        )
    return base, int(revision)


def revision_number(revision_id: str, field: str = "revision_id") -> int:
    """A request's revision id as a number; INVALID_RESOURCE_NAME when it is not one."""
    if not _REVISION_ID.fullmatch(revision_id):
        raise InvalidResourceName(
            f"{field} must be a revision id (a positive number)",
            metadata={"field": field, "revision_id": revision_id[:64]},
        )
    return int(revision_id)


def next_revision(current: Revision | None, origin: RevisionOrigin, author: str, note: str, now: datetime) -> Revision:
    """The revision after `current` (the first when None)."""
    number = int(current.revision_id) + 1 if current is not None else 1
    return Revision(str(number), now, origin, author, note[:1000])


def author_of(principal: Principal | None, author: str) -> str:
    """Who makes a change: what the edge named (a user, or "services/{name}" for a mesh
    caller without one), else the principal's user, else the tenant's own service."""
    if author:
        return author
    if principal is not None and principal.user:
        return principal.user
    return "services/unknown"


def bounds_violations(bounds: AutoSelectBounds | None, field: str) -> list[FieldViolation]:
    """Auto-select bounds: quality in [0, 1], a cost that is a non-negative amount of USD."""
    if bounds is None:
        return []
    out = []
    if not 0.0 <= bounds.min_quality <= 1.0:
        out.append(FieldViolation(f"{field}.min_quality", "must lie in [0, 1]"))
    cost = bounds.max_cost
    at = f"{field}.max_cost_per_million_tokens"
    if cost.currency_code not in ("", USD) or (not cost.is_zero and cost.currency_code != USD):
        out.append(FieldViolation(f"{at}.currency_code", "USD (the currency model prices are compared in)"))
    if cost.units < 0 or cost.nanos < 0:
        out.append(FieldViolation(at, "cannot be negative"))
    if not -999_999_999 <= cost.nanos <= 999_999_999:
        out.append(FieldViolation(f"{at}.nanos", "must lie in [-999999999, 999999999]"))
    return out
