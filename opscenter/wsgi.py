from opscenter.boot import settings_or_exit

settings_or_exit()

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
