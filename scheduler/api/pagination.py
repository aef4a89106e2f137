"""Pages of at most MAX_LIMIT rows (?limit=&offset=); an offset is bounded too, so no
database is asked for a row number it cannot hold."""

from __future__ import annotations

from rest_framework.pagination import LimitOffsetPagination

MAX_OFFSET = 10**9


class Pagination(LimitOffsetPagination):
    default_limit = 50
    max_limit = 500

    def get_offset(self, request):
        return min(super().get_offset(request), MAX_OFFSET)
