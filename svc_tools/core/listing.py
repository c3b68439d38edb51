"""The catalogue as ListTools pages it: one list for every tenant, ordered by tool id.

A page token is the offset of the next page, bound to the parent it was issued for; it is
opaque to callers but not secret (it reveals nothing a caller could not list).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

from svc_tools.core.names import check_tenant
from svc_tools.errors import InvalidPageToken
from svc_tools.model import Tool

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


class Catalogue:
    """The tools this deployment offers, by id and in pages."""

    def __init__(self, tools: Sequence[Tool]) -> None:
        self.tools = tuple(sorted(tools, key=lambda tool: tool.id))
        self._by_id = {tool.id: tool for tool in self.tools}

    def find(self, tool_id: str) -> Tool | None:
        return self._by_id.get(tool_id)

    def list_tools(self, parent: str, page_size: int, page_token: str) -> tuple[list[Tool], str]:
        """One page of tools and the token of the next one ("" after the last)."""
        check_tenant(parent)
        size = DEFAULT_PAGE_SIZE if page_size <= 0 else min(page_size, MAX_PAGE_SIZE)
        offset = _offset_of(page_token, parent)
        page = list(self.tools[offset : offset + size])
        more = offset + size < len(self.tools)
        return page, _token_of(parent, offset + size) if more else ""


def _offset_of(token: str, parent: str) -> int:
    if not token:
        return 0
    try:
        owner, _, offset = base64.urlsafe_b64decode(token.encode()).decode().rpartition("|")
        value = int(offset)
    except (ValueError, UnicodeDecodeError):
        raise InvalidPageToken("page_token is not one this service issued") from None
    if owner != parent or value < 0:
        raise InvalidPageToken("page_token was issued for other parameters")
    return value


def _token_of(parent: str, offset: int) -> str:
    return base64.urlsafe_b64encode(f"{parent}|{offset}".encode()).decode()
