from __future__ import annotations

from django.urls import path

from tutoring.consumers import ChatConsumer

websocket_urlpatterns = [
    path("ws/chat/<int:conversation>/", ChatConsumer.as_asgi()),
]
