"""Console pages: one module per area. A view checks access, asks the models, and renders
one template; an htmx request gets the page's partial (`page.html#partial`) instead."""
