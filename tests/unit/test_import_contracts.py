"""The `domain_edge` import contract (skm_stack.import_contracts) on small import graphs: a
module nobody listed is covered, indirect chains count, the edge may do what the domain may not."""

from __future__ import annotations

import grimp

from skm_stack.import_contracts import DomainEdgeContract


def _contract() -> DomainEdgeContract:
    return DomainEdgeContract(
        name="domain",
        session_options={},
        contract_options={
            "services": ["svc_x"],
            "edge": ["__main__", "api", "adapters"],
            "edge_modules": ["svc_x.wire"],
            "forbidden_modules": ["grpc", "yaml"],
        },
    )


def _graph(*imports: tuple[str, str]) -> grimp.ImportGraph:
    graph = grimp.ImportGraph()
    for module in (
        "svc_x",
        "svc_x.api",
        "svc_x.core",
        "svc_x.brand_new",
        "svc_x.adapters",
        "svc_x.adapters.db",
        "svc_x.wire",
        "shared",
        "shared.pure",
        "shared.server",
    ):
        graph.add_module(module)
    graph.add_module("grpc", is_squashed=True)
    graph.add_module("yaml", is_squashed=True)
    graph.add_import(importer="shared.server", imported="grpc")
    for importer, imported in imports:
        graph.add_import(importer=importer, imported=imported)
    return graph


def _broken(graph: grimp.ImportGraph) -> list[tuple[str, str]]:
    check = _contract().check(graph, verbose=False)
    return sorted((item["module"], item["imported"]) for item in check.metadata["broken"])


def test_the_edge_may_use_the_wire_and_the_domain_may_use_pure_shared_code() -> None:
    graph = _graph(
        ("svc_x.api", "grpc"),
        ("svc_x.api", "svc_x.core"),
        ("svc_x.adapters.db", "yaml"),
        ("svc_x.wire", "grpc"),
        ("svc_x.core", "shared.pure"),
    )
    check = _contract().check(graph, verbose=False)
    assert check.kept
    assert check.metadata["covered"]["svc_x"] == ["svc_x", "svc_x.brand_new", "svc_x.core"]


def test_a_module_nobody_listed_is_held_to_the_rule() -> None:
    assert _broken(_graph(("svc_x.brand_new", "yaml"))) == [("svc_x.brand_new", "yaml")]


def test_an_indirect_import_through_shared_code_counts() -> None:
    assert _broken(_graph(("svc_x.core", "shared.server"))) == [("svc_x.core", "grpc")]


def test_the_domain_may_not_reach_its_own_edge() -> None:
    broken = _broken(_graph(("svc_x.core", "svc_x.adapters.db")))
    assert broken == [("svc_x.core", "svc_x.adapters.db")]
