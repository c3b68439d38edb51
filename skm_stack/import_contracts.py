"""An import-linter contract that covers every module of a service without anyone listing it.

`domain_edge`: in each service package, the modules at its edge (`__main__`, `api`,
`convert`, `adapters`, and any named in `edge_modules`) may use grpc, generated code, drivers
and HTTP clients; every other module is the service's domain (its core, model, ports,
errors, settings, and whatever is added later) and may import none of `forbidden_modules`,
directly or through other modules (skm_runtime's grpc parts included), nor any module of its
own service's edge. A module added to a service is checked the moment it exists.

Configured in pyproject.toml; `make lint` runs it with the other contracts.
"""

from __future__ import annotations

from typing import Any

from grimp import ImportGraph
from importlinter.application import output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck


def _is_in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


class DomainEdgeContract(Contract):
    """See the module docstring."""

    type_name = "domain_edge"

    services = fields.ListField(subfield=fields.StringField())
    edge = fields.ListField(subfield=fields.StringField())
    edge_modules = fields.ListField(subfield=fields.StringField(), required=False)
    forbidden_modules = fields.ListField(subfield=fields.StringField())

    def _strings(self, option: str) -> list[str]:
        """A list option's parsed value (fields are class attributes the base class sets
        per instance, so the type checker sees the field, not the value)."""
        value: Any = getattr(self, option)
        return [str(v) for v in value or ()]

    def _edge_of(self, service: str) -> list[str]:
        names = [f"{service}.{name}" for name in self._strings("edge")]
        return names + [m for m in self._strings("edge_modules") if _is_in(m, service)]

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        present = [m for m in self._strings("forbidden_modules") if m in graph.modules]
        broken: list[dict[str, Any]] = []
        covered: dict[str, list[str]] = {}
        for service in self._strings("services"):
            edge = self._edge_of(service)
            modules = sorted(graph.find_descendants(service) | {service})
            domain = [m for m in modules if not any(_is_in(m, e) for e in edge)]
            own_edge = [m for m in modules if any(_is_in(m, e) for e in edge)]
            covered[service] = domain
            for module in domain:
                for target in present + own_edge:
                    chain = graph.find_shortest_chain(importer=module, imported=target)
                    if chain:
                        broken.append({"module": module, "imported": target, "chain": list(chain)})
        for service, domain in covered.items():
            # Always said, so `make lint` shows that each service's core is covered.
            output.print(f"{service}: {len(domain)} domain modules checked")
            names = ", ".join(m.removeprefix(service + ".") for m in domain if m != service) or "-"
            output.verbose_print(verbose, f"{service}: {names}")
        return ContractCheck(kept=not broken, metadata={"broken": broken, "covered": covered})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for item in check.metadata["broken"]:
            output.print_error(f"{item['module']} is not allowed to import {item['imported']}:", bold=True)
            output.new_line()
            output.indent_cursor()
            output.print_error(" -> ".join(item["chain"]), bold=False)
            output.new_line()
