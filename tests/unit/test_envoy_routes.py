"""The committed Envoy template agrees with the contract: each public method goes to its owner.

The template is rendered with a distinct port per owner and read back as YAML; the checker
(skm_stack.envoy_routes.check_config) finds nothing wrong in it, and finds each corruption
below, so an agreement it reports means something.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from string import Template
from typing import Any

import pytest
import yaml

from skm_runtime.contract import methods
from skm_stack.envoy import render_config, template_path
from skm_stack.envoy_routes import (
    GATEWAY,
    GATEWAY_PREFIXES,
    MESH_HEADER_PREFIX,
    check_config,
    clusters,
    public_routes,
    render_template,
)

Config = dict[str, Any]

CONTRACT = methods()
PUBLIC = public_routes(CONTRACT)
INTERNAL = sorted(path for path, method in CONTRACT.items() if method.authz is None)
# A distinct port per cluster, so a cluster pointing at another's port shows.
UPSTREAMS = {name: 50051 + number for number, name in enumerate(clusters(CONTRACT))}


def _config(upstreams: Mapping[str, int] = UPSTREAMS) -> Config:
    loaded: Config = yaml.safe_load(render_config(18080, 19901, upstreams))
    return loaded


def _routes(config: Config) -> list[dict[str, Any]]:
    hosts = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    routes: list[dict[str, Any]] = hosts["route_config"]["virtual_hosts"][0]["routes"]
    return routes


def _filters(config: Config) -> list[dict[str, Any]]:
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    filters: list[dict[str, Any]] = manager["http_filters"]
    return filters


def _route_of(config: Config, path: str) -> dict[str, Any]:
    return next(route for route in _routes(config) if route["match"].get("path") == path)


def _other_owner(owner: str) -> str:
    return next(name for name in clusters(CONTRACT) if name not in (owner, GATEWAY))


def test_the_contract_has_public_and_internal_methods_to_route() -> None:
    # Without both kinds, the checks below would pass vacuously.
    assert len(PUBLIC) > 10
    assert INTERNAL
    assert len(set(PUBLIC.values())) > 1


def test_the_committed_template_is_what_the_contract_generates() -> None:
    assert template_path().read_text() == render_template(), "run 'make gen' and commit"


def test_the_rendered_config_agrees_with_the_contract() -> None:
    config = _config()
    assert check_config(config, CONTRACT, UPSTREAMS) == []
    routes = _routes(config)
    # Read directly, not through the checker: one exact route per public method, to its owner.
    exact = {route["match"]["path"]: route["route"]["cluster"] for route in routes if "path" in route["match"]}
    assert exact == PUBLIC
    assert not set(exact) & set(INTERNAL)
    assert [route["match"] for route in routes[len(exact) :]] == [
        *({"prefix": prefix} for prefix in GATEWAY_PREFIXES),
        {"prefix": "/"},
    ]
    assert {route["route"]["cluster"] for route in routes[len(exact) :]} == {GATEWAY}


def test_the_edge_removes_every_mesh_header() -> None:
    filters = _filters(_config())
    names = [http_filter["name"].rpartition(".")[2] for http_filter in filters]
    assert names == ["grpc_web", "cors", "header_mutation", "router"]
    mutations = filters[2]["typed_config"]["mutations"]["request_mutations"]
    assert mutations == [{"remove_on_match": {"key_matcher": {"prefix": MESH_HEADER_PREFIX}}}]


def test_one_upstream_serves_every_cluster() -> None:
    config = _config({GATEWAY: 50999})
    assert check_config(config, CONTRACT, {GATEWAY: 50999}) == []
    ports = {
        cluster["name"]: cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
            "socket_address"
        ]["port_value"]
        for cluster in config["static_resources"]["clusters"]
    }
    assert set(ports.values()) == {50999}
    assert set(ports) == {*PUBLIC.values(), GATEWAY}


def test_a_cluster_without_a_port_and_no_gateway_is_refused() -> None:
    with pytest.raises(ValueError, match="no gateway port"):
        render_config(18080, 19901, {"conversation": 50052})


# -- the checker finds each way a config can disagree with the contract ---------------------

_A_PUBLIC = next(iter(PUBLIC))


def _to_other_owner(config: Config) -> None:
    route = _route_of(config, _A_PUBLIC)
    route["route"]["cluster"] = _other_owner(PUBLIC[_A_PUBLIC])


def _drop_a_public_route(config: Config) -> None:
    _routes(config).remove(_route_of(config, _A_PUBLIC))


def _route_an_internal_method(config: Config) -> None:
    internal = INTERNAL[0]
    route = copy.deepcopy(_routes(config)[0])
    route["match"] = {"path": internal}
    route["route"]["cluster"] = CONTRACT[internal].owner
    _routes(config).insert(0, route)


def _shadow_with_a_prefix(config: Config) -> None:
    service = _A_PUBLIC.rpartition("/")[0] + "/"
    route = copy.deepcopy(_routes(config)[-1])
    route["match"] = {"prefix": service}
    _routes(config).insert(0, route)


def _drop_the_catch_all(config: Config) -> None:
    _routes(config).pop()


def _health_to_an_owner(config: Config) -> None:
    route = next(route for route in _routes(config) if route["match"].get("prefix") == GATEWAY_PREFIXES[0])
    route["route"]["cluster"] = PUBLIC[_A_PUBLIC]


def _a_route_timeout(config: Config) -> None:
    _route_of(config, _A_PUBLIC)["route"]["timeout"] = "15s"


def _no_header_removal(config: Config) -> None:
    filters = _filters(config)
    filters.remove(next(f for f in filters if f["name"].endswith("header_mutation")))


def _removal_after_the_router(config: Config) -> None:
    filters = _filters(config)
    filters.append(filters.pop(2))


def _another_prefix_removed(config: Config) -> None:
    mutation = _filters(config)[2]["typed_config"]["mutations"]["request_mutations"][0]
    mutation["remove_on_match"]["key_matcher"]["prefix"] = "x-mesh-"


def _drop_an_owners_cluster(config: Config) -> None:
    owner = PUBLIC[_A_PUBLIC]
    clusters_ = config["static_resources"]["clusters"]
    clusters_.remove(next(cluster for cluster in clusters_ if cluster["name"] == owner))


def _cluster_on_another_port(config: Config) -> None:
    owner = PUBLIC[_A_PUBLIC]
    cluster = next(c for c in config["static_resources"]["clusters"] if c["name"] == owner)
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    endpoint["address"]["socket_address"]["port_value"] = UPSTREAMS[GATEWAY]


@pytest.mark.parametrize(
    ("corrupt", "complaint"),
    [
        (_to_other_owner, f"{_A_PUBLIC} goes to"),
        (_drop_a_public_route, f"{_A_PUBLIC} has 0 exact routes"),
        (_route_an_internal_method, "which is no public method"),
        (_shadow_with_a_prefix, "unexpected prefix route"),
        (_drop_the_catch_all, "the last route is not the catch-all"),
        (_health_to_an_owner, "/grpc.health.v1.Health/"),
        (_a_route_timeout, "may cut streams"),
        (_no_header_removal, "are not removed"),
        (_removal_after_the_router, "HTTP filters are"),
        (_another_prefix_removed, "are not removed"),
        (_drop_an_owners_cluster, "names no defined cluster"),
        (_cluster_on_another_port, "points at ports"),
    ],
)
def test_the_checker_finds_a_corrupted_config(corrupt: Callable[[Config], None], complaint: str) -> None:
    config = _config()
    corrupt(config)
    problems = check_config(config, CONTRACT, UPSTREAMS)
    assert any(complaint in problem for problem in problems), problems


def test_a_template_from_another_contract_disagrees_with_this_one() -> None:
    moved = dict(CONTRACT)
    moved[_A_PUBLIC] = dataclasses.replace(CONTRACT[_A_PUBLIC], owner=_other_owner(PUBLIC[_A_PUBLIC]))
    template = Template(render_template(moved))
    stale: Config = yaml.safe_load(template.substitute(dict.fromkeys(template.get_identifiers(), 1)))
    assert check_config(stale, moved) == []
    assert any(_A_PUBLIC in problem for problem in check_config(stale, CONTRACT))
