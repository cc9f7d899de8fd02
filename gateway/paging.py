"""`limit`, `cursor` and `compact`: the query parameters of the message-list routes.

Without `limit` or `cursor` a route answers everything, as seed 000 does. A cursor is
opaque to clients; here it is the position of the last message a page held (its seq in
creation order, or its depth on a root..leaf path), so the next page starts after it
however many messages were appended meanwhile. The next page's cursor travels in the
`X-Next-Cursor` header (and a `Link: rel="next"`), so list bodies keep their shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from aiohttp import web

from engine.errors import InvalidInput

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100  # a page's size when only a cursor is given
_MAX_CURSOR_DIGITS = 18  # an int64, whatever a client sends
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


@dataclass(frozen=True)
class Page:
    """Which part of a message list to answer, and in which shape."""

    limit: int | None = None  # None: the whole list
    after: int = -1  # the cursor: the position of the last message already seen
    compact: bool = False  # drop each message's lineage (depth and parent rebuild it)

    @property
    def paged(self) -> bool:
        return self.limit is not None


WHOLE = Page()


def page_of(request: web.Request) -> Page:
    """The request's page; 422 for a malformed limit, cursor or compact."""
    query = request.query
    if not query:
        return WHOLE
    limit = _integer(query.get("limit"), "limit", 1, MAX_LIMIT)
    cursor = _integer(query.get("cursor"), "cursor", 0, 10**_MAX_CURSOR_DIGITS)
    if cursor is not None and limit is None:
        limit = DEFAULT_LIMIT
    return Page(limit, -1 if cursor is None else cursor, _boolean(query.get("compact")))


def next_headers(request: web.Request, page: Page, cursor: str | None) -> dict[str, str]:
    """The headers that point at the next page, if there is one."""
    if cursor is None:
        return {}
    query = {"limit": str(page.limit), "cursor": cursor}
    if page.compact:
        query["compact"] = "true"
    return {"X-Next-Cursor": cursor, "Link": f'<{request.path}?{urlencode(query)}>; rel="next"'}


def _integer(raw: str | None, name: str, low: int, high: int) -> int | None:
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= _MAX_CURSOR_DIGITS):
        raise InvalidInput(f"{name} must be an integer from {low} to {high}")
    value = int(raw)
    if not low <= value <= high:
        raise InvalidInput(f"{name} must be an integer from {low} to {high}")
    return value


def _boolean(raw: str | None) -> bool:
    if raw is None:
        return False
    value = _BOOLEANS.get(raw.lower())
    if value is None:
        raise InvalidInput(f"compact must be true or false; got {raw!r}")
    return value
