from __future__ import annotations

from django.urls import path

from tutoring import api

urlpatterns = [
    path("courses/<slug:slug>/ask/", api.ask, name="api-course-ask"),
]
