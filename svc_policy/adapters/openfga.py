"""OpenFGA behind svc_policy's Authorizer port, over its HTTP API.

- One store and one authorization model per deployment. `bootstrap` finds or creates the
  store by name and writes the model only when it differs from the store's latest one;
  the authorizer names that model id on every call, so a model change is explicit (a new
  model file, a restart), never picked up behind svc_policy's back.
- The model's source is deploy/openfga/model.fga; what is sent is its JSON form,
  deploy/openfga/model.json, committed next to it (tests/unit/test_openfga_model.py
  checks that `fga model transform` of the DSL still gives it). Production then needs
  neither the `fga` binary nor a subprocess at start.
- Checks go out as server-side BatchCheck: one round trip for up to `max_checks_per_batch`
  checks (OpenFGA's --max-checks-per-batch-check, 50 by default); larger lists are split
  into that many concurrent requests. They are the hot path, so they are plain JSON over
  one long-lived aiohttp session: openfga-sdk spends about 1 ms of CPU per call on
  building its model objects (each copies a Configuration) and on reading proxy settings
  and ~/.netrc again for every request. Writes, deletes, reads and bootstrap use the SDK.
- Fail closed. A condition whose parameters the check lacks (or carries with the wrong
  type) makes OpenFGA report an error for that check: it counts as False. Unreachable
  server, timeout, 5xx, 429, refused credentials, a missing store or model:
  PolicyBackendUnavailable. Unknown types or relations: InvalidCheck / InvalidRelationship.
  No openfga-sdk or aiohttp exception leaves this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from json.encoder import encode_basestring_ascii as _quoted  # json.dumps' own escaping of a str
from pathlib import Path
from typing import Any

import aiohttp
from openfga_sdk import ClientConfiguration, OpenFgaClient
from openfga_sdk.client.models import ClientTuple, ClientWriteRequest
from openfga_sdk.client.models.write_conflict_opts import (
    ClientWriteRequestOnDuplicateWrites,
    ClientWriteRequestOnMissingDeletes,
    ConflictOptions,
)
from openfga_sdk.configuration import RetryParams
from openfga_sdk.credentials import CredentialConfiguration, Credentials
from openfga_sdk.exceptions import (
    ApiException,
    AuthenticationError,
    OpenApiException,
    ValidationException,
)
from openfga_sdk.models import (
    CreateStoreRequest,
    ReadRequestTupleKey,
    RelationshipCondition,
    WriteAuthorizationModelRequest,
)

from skm_runtime.access import AccessCheck
from svc_policy.errors import (
    InvalidCheck,
    InvalidPageToken,
    InvalidRelationship,
    PolicyBackendUnavailable,
    PolicyError,
    TooManyRelationships,
)
from svc_policy.model import Condition, Relationship

MODEL_JSON = Path(__file__).resolve().parents[2] / "deploy" / "openfga" / "model.json"
DEFAULT_TIMEOUT = 3.0
# OpenFGA's defaults for --max-checks-per-batch-check and --max-tuples-per-write, and the
# largest page its Read returns.
SERVER_BATCH_LIMIT = 50
WRITE_LIMIT = 100
READ_PAGE_LIMIT = 100
# How many pages of the whole store one type-wide read without a subject may scan.
_SCAN_PAGES = 20

# OpenFGA reports a condition it cannot evaluate (a parameter missing from the context or
# of the wrong type) with this message prefix on the check's own error.
_CONDITION_NOT_EVALUATED = "failed to evaluate relationship condition"
# Validation codes that mean the pinned store or model is gone: a deployment fault, not
# the caller's.
_ULID = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}")
_BACKEND_FAULTS = {"authorization_model_not_found", "latest_authorization_model_not_found", "store_id_invalid_length"}
# Answers worth one more try, after 20-40 ms (openfga-sdk's retry of the other calls, as
# configured in _configuration): rate limited, and server errors other than "not
# implemented".
_RETRIED = {429, 500, *range(502, 600)}
_CHECK = {"operation": "check"}
_PING_SECONDS = 1.0


def read_model(path: Path) -> dict[str, Any]:
    """The JSON form of the authorization model at `path`.

    `path` is the JSON file or the DSL file it was made from; for "model.fga" the
    committed "model.json" beside it is read.
    """
    json_path = path.with_suffix(".json") if path.suffix == ".fga" else path
    model = json.loads(json_path.read_text())
    if not isinstance(model, dict) or model.get("schema_version") != "1.1":
        raise ValueError(f"{json_path}: not an OpenFGA 1.1 authorization model in JSON form")
    return model


def condition_parameters(model: Mapping[str, Any]) -> dict[str, str]:
    """Parameter name -> its type in the model's conditions ("TYPE_NAME_DOUBLE", ...). A check's
    context is one namespace for every condition, so a name must have one type throughout."""
    types: dict[str, str] = {}
    for condition_name, condition in (model.get("conditions") or {}).items():
        for name, spec in (condition.get("parameters") or {}).items():
            type_name = str(spec.get("type_name", ""))
            if types.setdefault(str(name), type_name) != type_name:
                raise ValueError(
                    f"condition {condition_name}: parameter {name!r} is {type_name}, another condition's is "
                    f"{types[str(name)]}; a check's context cannot be checked against both"
                )
    return types


def _fits(value: Any, type_name: str) -> bool:
    """Whether a JSON value can stand for a condition parameter of `type_name`."""
    if type_name in ("TYPE_NAME_DOUBLE", "TYPE_NAME_INT", "TYPE_NAME_UINT"):
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if type_name == "TYPE_NAME_DOUBLE" or not number:
            return number
        return float(value).is_integer() and (type_name == "TYPE_NAME_INT" or value >= 0)
    if type_name in ("TYPE_NAME_STRING", "TYPE_NAME_IPADDRESS", "TYPE_NAME_TIMESTAMP", "TYPE_NAME_DURATION"):
        return isinstance(value, str)
    if type_name == "TYPE_NAME_BOOL":
        return isinstance(value, bool)
    return True  # lists, maps, any: OpenFGA judges them


def relations_of(model: Mapping[str, Any]) -> dict[str, frozenset[str]]:
    """Type name -> the relations the model defines on it."""
    return {
        str(definition["type"]): frozenset(definition.get("relations") or {})
        for definition in model.get("type_definitions", [])
    }


class OpenFgaAuthorizer:
    """The Authorizer port on one OpenFGA store and pinned authorization model.

    Call `close` when done (it owns an HTTP connection pool). Every call ends within
    `timeout` seconds.
    """

    def __init__(
        self,
        api_url: str,
        token: str,
        store_id: str,
        model_id: str,
        *,
        model_path: Path = MODEL_JSON,
        timeout: float = DEFAULT_TIMEOUT,
        max_checks_per_batch: int = SERVER_BATCH_LIMIT,
    ) -> None:
        for name, value in (("store_id", store_id), ("model_id", model_id)):
            if not _ULID.fullmatch(value):
                raise ValueError(f"{name} must be an OpenFGA id (a ULID), got {value!r}")
        # The model svc_policy was started with; bootstrap wrote it as `model_id`.
        model = read_model(model_path)
        self._relations = relations_of(model)
        self._parameters = condition_parameters(model)
        self._configuration = _configuration(api_url, token, timeout, store_id=store_id, model_id=model_id)
        self._timeout = timeout
        self._batch = max_checks_per_batch
        self._client: OpenFgaClient | None = None
        self._batch_check_url = f"{api_url.rstrip('/')}/stores/{store_id}/batch-check"
        self._healthz_url = f"{api_url.rstrip('/')}/healthz"
        self._model_id = model_id
        # What every BatchCheck body starts with, by `fresh` (see _batch_check_bodies).
        self._heads = {
            fresh: f'{{"authorization_model_id":{_quoted(model_id)},"consistency":"{consistency}","checks":['
            for fresh, consistency in ((False, "MINIMIZE_LATENCY"), (True, "HIGHER_CONSISTENCY"))
        }
        self._token = token
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()  # type: ignore[no-untyped-call]  # openfga-sdk leaves it unannotated

    async def __aenter__(self) -> OpenFgaAuthorizer:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def defines(self, object_type: str, relation: str) -> bool:
        return relation in self._relations.get(object_type, ())

    async def check(self, checks: Sequence[AccessCheck], *, fresh: bool) -> list[bool]:
        for check in checks:
            object_type = check.object.partition(":")[0]
            if not self.defines(object_type, check.relation):
                raise InvalidCheck(
                    "the authorization model has no such relation on this type",
                    metadata={"type": object_type, "relation": check.relation},
                )
        if not checks:
            return []
        for check in checks:
            self._check_context(check.context)
        bodies = self._batch_check_bodies(checks, fresh)
        async with _translated("check", InvalidCheck, self._timeout):
            if len(bodies) == 1:
                results = await self._batch_check(bodies[0])
            else:
                tasks = [asyncio.ensure_future(self._batch_check(body)) for body in bodies]
                try:
                    parts = await asyncio.gather(*tasks)
                except BaseException:
                    for task in tasks:  # the first failure decides; the others need not finish
                        task.cancel()
                    raise
                results = {key: result for part in parts for key, result in part.items()}
        answers = []
        for index in range(len(checks)):
            result = results.get(str(index))
            if not isinstance(result, dict):
                raise PolicyBackendUnavailable("OpenFGA left checks of a batch unanswered", metadata=_CHECK)
            answers.append(_answer(result))
        return answers

    def _check_context(self, context: Mapping[str, Any] | None) -> None:
        """A context value for a condition parameter must be of the parameter's type.
        OpenFGA would only report that condition as not evaluated, which reads as "not
        met": an escalation (caller_agitated) would then be skipped, failing open."""
        for name, value in (context or {}).items():
            type_name = self._parameters.get(name)
            if type_name is not None and not _fits(value, type_name):
                kind = type_name.removeprefix("TYPE_NAME_").lower()
                raise InvalidCheck(
                    f"context parameter {name!r} must be a {kind}",
                    metadata={"operation": "check", "parameter": name, "type": kind},
                )

    def _batch_check_bodies(self, checks: Sequence[AccessCheck], fresh: bool) -> list[bytes]:
        """BatchCheck request bodies of at most `_batch` checks each, a check's correlation
        id being its index in `checks`.

        Written out rather than through json.dumps of nested dicts (a quarter of the CPU
        for a decision's six probes): only the ids and names vary, each escaped as
        json.dumps escapes a string, and a context goes through json.dumps itself."""
        head = self._heads[fresh]
        bodies = []
        for first in range(0, len(checks), self._batch):
            items = []
            for index in range(first, min(first + self._batch, len(checks))):
                check = checks[index]
                item = (
                    f'{{"tuple_key":{{"user":{_quoted(check.subject)},"relation":{_quoted(check.relation)},'
                    f'"object":{_quoted(check.object)}}},"correlation_id":"{index}"'
                )
                if check.context:
                    try:
                        context = json.dumps(check.context, separators=(",", ":"), allow_nan=False)
                    except (TypeError, ValueError) as error:
                        raise InvalidCheck(f"a check's context is not JSON: {error}", metadata=_CHECK) from error
                    item = f'{item},"context":{context}'
                items.append(f"{item}}}")
            bodies.append(f"{head}{','.join(items)}]}}".encode())
        return bodies

    async def _batch_check(self, body: bytes) -> dict[str, Any]:
        """POST one BatchCheck; its results by correlation id. Refusals raise domain errors;
        transport errors and timeouts are left to `_translated`."""
        session = self._http()
        for attempt in range(2):
            try:
                async with session.post(self._batch_check_url, data=body) as response:
                    status = response.status
                    payload = await response.read()
            except aiohttp.ServerDisconnectedError:
                # A kept-alive connection that OpenFGA had just closed; aiohttp retries
                # only idempotent methods itself, and a check changes nothing.
                if attempt == 0:
                    continue
                raise
            if status == 200:
                break
            if attempt == 0 and status in _RETRIED:
                await asyncio.sleep(random.uniform(0.020, 0.040))
                continue
            code, message = _error_of(payload)
            raise _refusal(status, code, message, InvalidCheck, _CHECK)
        try:
            results = json.loads(payload)["result"]
        except (ValueError, KeyError, TypeError) as error:
            raise PolicyBackendUnavailable("OpenFGA sent an unreadable BatchCheck answer", metadata=_CHECK) from error
        if not isinstance(results, dict):
            raise PolicyBackendUnavailable("OpenFGA sent an unreadable BatchCheck answer", metadata=_CHECK)
        return results

    async def ping(self) -> None:
        """OpenFGA's health endpoint answers SERVING (it checks its datastore too)."""
        try:
            async with self._http().get(self._healthz_url, timeout=aiohttp.ClientTimeout(total=_PING_SECONDS)) as reply:
                status = reply.status
                body = await reply.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise PolicyBackendUnavailable("OpenFGA cannot be reached", metadata={"operation": "ping"}) from error
        if status != 200 or b"SERVING" not in body or b"NOT_SERVING" in body:
            meta = {"operation": "ping", "status": str(status)}
            raise PolicyBackendUnavailable("OpenFGA is not serving", metadata=meta)

    async def write(self, relationships: Sequence[Relationship]) -> None:
        tuples = _tuples(relationships, with_conditions=True)
        if tuples:
            conflict = ConflictOptions(on_duplicate_writes=ClientWriteRequestOnDuplicateWrites.IGNORE)
            async with _translated("write", InvalidRelationship, self._timeout):
                await self._fga().write(ClientWriteRequest(writes=tuples), _options(conflict=conflict))

    async def delete(self, relationships: Sequence[Relationship]) -> None:
        tuples = _tuples(relationships, with_conditions=False)
        if tuples:
            conflict = ConflictOptions(on_missing_deletes=ClientWriteRequestOnMissingDeletes.IGNORE)
            async with _translated("delete", InvalidRelationship, self._timeout):
                await self._fga().write(ClientWriteRequest(deletes=tuples), _options(conflict=conflict))

    async def read(
        self, subject: str, relation: str, object_: str, page_size: int, page_token: str
    ) -> tuple[list[Relationship], str]:
        """A page holds at most 100 relationships (OpenFGA's limit).

        OpenFGA filters by a whole object, or by an object type together with a subject. A
        type-wide filter without a subject ("tool:", any subject) is served by reading the
        store's tuples in order and keeping the matching ones, so its pages may hold fewer
        relationships than asked for, even none, and still carry a next page token.
        """
        object_type, sep, object_id = object_.partition(":")
        if not sep or not object_type:
            raise InvalidRelationship('the filter\'s object must be "{type}:{id}" or "{type}:"')
        limit = max(1, min(page_size, READ_PAGE_LIMIT))
        async with _translated("read", InvalidRelationship, self._timeout):
            if object_id or subject:
                key = ReadRequestTupleKey(  # type: ignore[no-untyped-call]  # openfga-sdk leaves it unannotated
                    user=subject or None, relation=relation or None, object=object_
                )
                return await self._read_page(key, limit, page_token)
            found: list[Relationship] = []
            token = page_token
            for _ in range(_SCAN_PAGES):
                page, token = await self._read_page(None, limit - len(found), token)
                found += [r for r in page if r.object.startswith(object_) and relation in ("", r.relation)]
                if len(found) >= limit or not token:
                    break
            return found, token

    async def _read_page(self, key: Any, limit: int, token: str) -> tuple[list[Relationship], str]:
        options: dict[str, Any] = {"page_size": limit}
        if token:
            options["continuation_token"] = token
        response = await self._fga().read(key, options)
        found = [_relationship(item.key) for item in response.tuples or []]
        return found, response.continuation_token or ""

    def _fga(self) -> OpenFgaClient:
        # Made on first use, inside the running event loop that its aiohttp session binds to.
        if self._client is None:
            self._client = OpenFgaClient(self._configuration)
        return self._client

    def _http(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running event loop it binds to. Kept-alive
        # connections; trust_env stays off because aiohttp would otherwise look up proxy
        # variables and ~/.netrc on every request (about 0.6 ms of CPU each).
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={
                    "Authorization": f"Bearer {self._token}",
                    "Content-Type": "application/json",
                    "Accept": "application/json",
                },
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                raise_for_status=False,
            )
        return self._session


async def bootstrap(
    api_url: str, token: str, store_name: str, model_path: Path, *, deadline: float = DEFAULT_TIMEOUT
) -> tuple[str, str]:
    """Find or create the store `store_name` and make sure its latest model is the one at
    `model_path` (see `read_model`), writing it only when it differs. Returns (store id,
    model id) for OpenFgaAuthorizer.

    Idempotent; when several copies start at once and each creates the store, all of them
    settle on the oldest store of that name (the others stay behind, empty). Each request
    has `deadline` seconds, the whole bootstrap four times that. Refused credentials or an
    unreachable server raise PolicyBackendUnavailable, so a misconfigured svc_policy fails
    at start rather than at its first check.
    """
    model = read_model(model_path)
    async with (
        OpenFgaClient(_configuration(api_url, token, deadline)) as fga,
        _translated("bootstrap", InvalidRelationship, deadline * 4),
    ):
        store_id = await _store_named(fga, store_name)
        if store_id is None:
            await fga.create_store(CreateStoreRequest(name=store_name))  # type: ignore[no-untyped-call]  # as above
            store_id = await _store_named(fga, store_name)
            assert store_id is not None  # just created
        fga.set_store_id(store_id)
        try:
            latest = await fga.read_latest_authorization_model()
            current = latest.authorization_model
        except ValidationException as error:  # a new store has no model yet
            if _code(error) != "latest_authorization_model_not_found":
                raise
            current = None
        if current is not None and _canonical(_json_form(current), drop={"id"}) == _canonical(model):
            return store_id, str(current.id)
        request = WriteAuthorizationModelRequest(**model)  # type: ignore[no-untyped-call]  # as above
        written = await fga.write_authorization_model(request)
        return store_id, str(written.authorization_model_id)


async def _store_named(fga: OpenFgaClient, name: str) -> str | None:
    stores: list[Any] = []
    token = ""
    while True:
        options: dict[str, Any] = {"name": name, "page_size": 100}
        if token:
            options["continuation_token"] = token
        page = await fga.list_stores(options)
        stores.extend(store for store in page.stores or [] if store.name == name)
        token = page.continuation_token or ""
        if not token:
            break
    if not stores:
        return None
    return str(min(stores, key=lambda store: (store.created_at, store.id)).id)


def _configuration(
    api_url: str, token: str, timeout: float, *, store_id: str | None = None, model_id: str | None = None
) -> ClientConfiguration:
    return ClientConfiguration(
        api_url=api_url,
        store_id=store_id,
        authorization_model_id=model_id,
        credentials=Credentials(method="api_token", configuration=CredentialConfiguration(api_token=token)),
        # One quick retry of a 429/5xx; the caller's deadline (asyncio.timeout) bounds it all.
        retry_params=RetryParams(max_retry=1, min_wait_in_ms=20),  # type: ignore[no-untyped-call]  # as above
        timeout_millisec=max(1, int(timeout * 1000)),
    )


@contextlib.asynccontextmanager
async def _translated(operation: str, invalid: type[PolicyError], seconds: float) -> AsyncIterator[None]:
    """Run an OpenFGA call under a deadline; turn every driver error into a domain error."""
    meta = {"operation": operation}
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError as error:
        raise PolicyBackendUnavailable(f"OpenFGA did not answer within {seconds:g} s", metadata=meta) from error
    except (aiohttp.ClientError, OSError) as error:
        raise PolicyBackendUnavailable("OpenFGA cannot be reached", metadata=meta) from error
    except AuthenticationError as error:
        raise _refusal(401, "", "", invalid, meta) from error
    except ApiException as error:
        raise _refusal(error.status, _code(error), _message(error), invalid, meta) from error
    except OpenApiException as error:
        # The SDK's own validation of what we would send (e.g. a malformed context).
        raise invalid(str(error), metadata=meta) from error


def _refusal(status: int, code: str, message: str, invalid: type[PolicyError], meta: dict[str, str]) -> PolicyError:
    """The domain error for an HTTP error answer of OpenFGA (`code`, `message`: its body)."""
    if status in (401, 403):
        # svc_policy's own credentials are wrong: the caller can do nothing about it, and
        # no decision can be made, so it is an outage of the backend (and fails closed).
        return PolicyBackendUnavailable(
            "OpenFGA refused svc_policy's credentials", metadata={**meta, "cause": "UNAUTHENTICATED"}
        )
    if status == 404:
        return PolicyBackendUnavailable(
            "OpenFGA does not know svc_policy's store", metadata={**meta, "cause": "STORE_NOT_FOUND"}
        )
    if status == 400:
        if code in _BACKEND_FAULTS:
            return PolicyBackendUnavailable(
                "OpenFGA does not know svc_policy's store or model", metadata={**meta, "cause": code.upper()}
            )
        if code == "invalid_continuation_token":
            return InvalidPageToken("the page token is not valid for this filter", metadata=meta)
        return invalid(message, metadata=meta)
    if status == 409 and "different condition" in message:
        return InvalidRelationship("the relationship exists with a different condition; delete it first", metadata=meta)
    # 5xx and 429 after the retry, 409 transaction conflicts, anything else the server says.
    return PolicyBackendUnavailable("OpenFGA failed the request", metadata={**meta, "status": str(status)})


def _error_of(body: bytes) -> tuple[str, str]:
    """(code, message) of an OpenFGA error body; ("", the text) when it is not one."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        return str(parsed.get("code") or ""), str(parsed.get("message") or "")
    return "", body.decode("utf-8", "replace")[:200]


def _options(**values: Any) -> dict[str, Any]:
    # openfga-sdk types its options as dict[str, int | str | dict]; they carry objects too.
    return values


def _answer(result: Mapping[str, Any]) -> bool:
    """One check's result in a BatchCheck answer: {"allowed": bool} or {"error": {...}}."""
    error = result.get("error")
    if error is None:
        return result.get("allowed") is True  # proto3 JSON leaves out a false one
    if not isinstance(error, dict):
        raise PolicyBackendUnavailable("OpenFGA sent an unreadable BatchCheck answer", metadata=_CHECK)
    message = str(error.get("message") or "")
    internal = error.get("internal_error")
    if internal not in (None, "no_internal_error"):
        raise PolicyBackendUnavailable("OpenFGA failed a check", metadata={**_CHECK, "cause": str(internal)})
    if message.startswith(_CONDITION_NOT_EVALUATED):
        return False  # fail closed: a condition that cannot be evaluated is not met
    raise InvalidCheck(message or "OpenFGA refused the check")


def _tuples(relationships: Sequence[Relationship], *, with_conditions: bool) -> list[ClientTuple]:
    if len(relationships) > WRITE_LIMIT:
        raise TooManyRelationships(
            f"at most {WRITE_LIMIT} relationships at once", metadata={"count": str(len(relationships))}
        )
    # The same tuple twice in one request is an error to OpenFGA; it is not one here.
    unique: dict[tuple[str, str, str], Relationship] = {}
    for relationship in relationships:
        unique.setdefault((relationship.subject, relationship.relation, relationship.object), relationship)
    return [
        ClientTuple(
            user=relationship.subject,
            relation=relationship.relation,
            object=relationship.object,
            condition=_condition(relationship.condition) if with_conditions else None,
        )
        for relationship in unique.values()
    ]


def _condition(condition: Condition | None) -> RelationshipCondition | None:
    if condition is None:
        return None
    return RelationshipCondition(  # type: ignore[no-untyped-call]  # openfga-sdk leaves it unannotated
        name=condition.name, context=dict(condition.context) or None
    )


def _relationship(key: Any) -> Relationship:
    condition = None
    if key.condition is not None and key.condition.name:
        condition = Condition(key.condition.name, dict(key.condition.context or {}))
    return Relationship(key.user, key.relation, key.object, condition)


def _code(error: ApiException) -> str:
    parsed = getattr(error, "parsed_exception", None)
    return str(getattr(parsed, "code", "") or "")


def _message(error: ApiException) -> str:
    parsed = getattr(error, "parsed_exception", None)
    message = getattr(parsed, "message", None)
    if message:
        return str(message)
    return str(error.body or error.reason or "")


def _json_form(value: Any) -> Any:
    """An SDK model object as the JSON the API speaks (its attribute_map names)."""
    if hasattr(value, "attribute_map") and hasattr(value, "openapi_types"):
        return {
            value.attribute_map[name]: _json_form(getattr(value, name))
            for name in value.openapi_types
            if getattr(value, name) is not None
        }
    if isinstance(value, list):
        return [_json_form(item) for item in value]
    if isinstance(value, dict):
        return {key: _json_form(item) for key, item in value.items()}
    return value


def _canonical(value: Any, drop: Collection[str] = ()) -> Any:
    """A model's JSON without proto3 defaults ("", [], {}), which the server fills in and
    the DSL transform leaves out. `this: {}` stays: the empty message is the definition."""
    if isinstance(value, dict):
        kept: dict[str, Any] = {}
        for key, item in value.items():
            if key in drop:
                continue
            item = _canonical(item)
            if key == "this" or item not in ("", [], {}, None):
                kept[key] = item
        return kept
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    return value
