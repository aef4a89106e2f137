"""Keyset pagination for the console's long lists (tasks, events): a page is "the next n rows
after this one in this order", so page 5,000 of 100,000 rows costs what page 1 costs, and
rows arriving meanwhile do not shift what the viewer sees.

The cursor in the URL is the sort value and the id of the row a page starts after, as text;
a cursor that does not parse is answered with the first page, never an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Q, QuerySet
from django.utils.dateparse import parse_datetime

PAGE_SIZES = (25, 50, 100, 200)
DEFAULT_PAGE_SIZE = 50


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


def _cursor(row, key: str) -> str:
    value = getattr(row, key)
    text = value.isoformat() if isinstance(value, datetime) else ("" if value is None else
                                                                  str(value))
    return f"{text}~{row.pk}"


def _parse(cursor: str | None, key_is_time: bool) -> tuple[object, int] | None:
    if not cursor or "~" not in cursor:
        return None
    text, _, pk = cursor.rpartition("~")
    try:
        pk_value = int(pk)
    except ValueError:
        return None
    if key_is_time:
        value = parse_datetime(text) if text else None
        if text and value is None:
            return None
        return value, pk_value
    return text, pk_value


def keyset_page(queryset: QuerySet, *, key: str = "id", descending: bool = True,
                after: str | None = None, before: str | None = None,
                size: int = DEFAULT_PAGE_SIZE, key_is_time: bool = False) -> Page:
    """One page of `queryset` ordered by (key, id), descending or not. `key` must not be
    null in the rows paged (order by id, a name, or a time that is always set)."""
    forward = before is None
    position = _parse(after if forward else before, key_is_time)
    newest_first = descending if forward else not descending
    qs = queryset
    if position is not None:
        value, pk = position
        if key in ("id", "pk"):
            value = pk
        # The plain bound (key <= value) is redundant but lets the database start its index
        # scan at the cursor (an "Index Cond"); the OR alone is only a filter, and a deep page
        # would read every row before it.
        if newest_first:
            qs = qs.filter(Q(**{f"{key}__lte": value}),
                           Q(**{f"{key}__lt": value}) | Q(**{key: value, "pk__lt": pk}))
        else:
            qs = qs.filter(Q(**{f"{key}__gte": value}),
                           Q(**{f"{key}__gt": value}) | Q(**{key: value, "pk__gt": pk}))
    order = [f"-{key}", "-pk"] if newest_first else [key, "pk"]
    if key in ("id", "pk"):
        order = order[1:]
    rows = list(qs.order_by(*order)[: size + 1])
    more = len(rows) > size
    rows = rows[:size]
    if not forward:
        rows.reverse()
    if not rows:
        return Page(rows=[], after=None, before=None, size=size)
    has_next = more if forward else True
    has_prev = (position is not None) if forward else more
    return Page(rows=rows,
                after=_cursor(rows[-1], key) if has_next else None,
                before=_cursor(rows[0], key) if has_prev else None,
                size=size)
