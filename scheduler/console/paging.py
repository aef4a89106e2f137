"""Keyset pagination for the console's long lists (tasks, events): a page is "the next n rows
after this id", newest first, so page 5,000 of 100,000 rows costs what page 1 costs (an index
scan of the primary key that starts at the cursor), and rows arriving meanwhile do not shift
what the viewer sees.

The cursor in the URL is the id of the row a page starts after (or before); one that does
not parse is answered with the first page, never an error. (A cursor of the older form
"<value>~<id>" is read by its id.)
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import QuerySet

PAGE_SIZES = (25, 50, 100, 200)
DEFAULT_PAGE_SIZE = 50
MAX_ID_DIGITS = 18  # a bigint


@dataclass
class Page:
    rows: list
    after: str | None  # cursor of the next page, None on the last
    before: str | None  # cursor of the previous page, None on the first
    size: int


def page_size(raw: str | None) -> int:
    try:
        size = int(raw or DEFAULT_PAGE_SIZE)
    except ValueError:
        return DEFAULT_PAGE_SIZE
    return size if size in PAGE_SIZES else DEFAULT_PAGE_SIZE


def _parse(cursor: str | None) -> int | None:
    text = (cursor or "").rpartition("~")[2]
    if not (text.isascii() and text.isdigit()) or len(text) > MAX_ID_DIGITS:
        return None
    return int(text)


def keyset_page(queryset: QuerySet, *, descending: bool = True, after: str | None = None,
                before: str | None = None, size: int = DEFAULT_PAGE_SIZE) -> Page:
    """One page of `queryset` ordered by id, descending (newest first) or not."""
    forward = before is None
    position = _parse(after if forward else before)
    newest_first = descending if forward else not descending
    qs = queryset
    if position is not None:
        qs = qs.filter(pk__lt=position) if newest_first else qs.filter(pk__gt=position)
    rows = list(qs.order_by("-pk" if newest_first else "pk")[: size + 1])
    more = len(rows) > size
    rows = rows[:size]
    if not forward:
        rows.reverse()
    if not rows:
        return Page(rows=[], after=None, before=None, size=size)
    has_next = more if forward else True
    has_prev = (position is not None) if forward else more
    return Page(rows=rows,
                after=str(rows[-1].pk) if has_next else None,
                before=str(rows[0].pk) if has_prev else None,
                size=size)
