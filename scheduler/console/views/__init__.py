"""Console pages: one module per area. A view checks access, asks the models, and renders
one template; an htmx request gets the page's partial (`page.html#partial`) instead."""


def query_with(request, *, drop: tuple[str, ...] = ("after", "before"), **changes) -> str:
    """This page's query string ("?…", the filters kept) with `changes` made: a value of None
    removes its key; the keys in `drop` (by default the keyset cursors) are removed first."""
    params = request.GET.copy()
    for key in drop:
        params.pop(key, None)
    for key, value in changes.items():
        if value is None:
            params.pop(key, None)
        else:
            params[key] = str(value)
    return "?" + params.urlencode()
