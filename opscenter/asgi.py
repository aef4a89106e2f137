"""The console's ASGI application: HTTP (Django) and its websockets (Channels).

Django is set up before the consumers are imported (they import models). Websockets are
only for browsers from an allowed origin with a logged-in session.
"""

from opscenter.boot import settings_or_exit

settings_or_exit()

from django.core.asgi import get_asgi_application  # noqa: E402

http_application = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from scheduler.console.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter({
    "http": http_application,
    "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
})
