"""ASGI entry point: HTTP through Django, websockets through Channels (session auth, origin
checked against ALLOWED_HOSTS)."""

from __future__ import annotations

import os
import threading

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tutor_site.settings")

django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs Django set up)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from knowledge import embedding  # noqa: E402
from tutoring.routing import websocket_urlpatterns  # noqa: E402

# Load the embedding model in the background now, so the first question does not wait for it.
threading.Thread(target=embedding.warm_up, name="embedding-warm-up", daemon=True).start()

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)
