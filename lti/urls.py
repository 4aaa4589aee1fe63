from __future__ import annotations

from django.urls import path

from lti import views

app_name = "lti"

urlpatterns = [
    path("init/<uuid:registration_uuid>/", views.LoginView.as_view(), name="init"),
    path("launch/", views.launch, name="launch"),
    path("jwks/", views.jwks, name="jwks"),
    path("deep-link/", views.deep_link, name="deep-link"),
]
