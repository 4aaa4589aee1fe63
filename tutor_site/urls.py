from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from tutor_site import views

admin.site.site_header = "Adaptive Tutor: instructors' back office"
admin.site.site_title = "Adaptive Tutor"
admin.site.index_title = "Your courses"

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("lti/", include("lti.urls")),
    path("api/", include("knowledge.urls")),
    path("api/", include("learners.urls")),
    path("api/", include("tutoring.api_urls")),
    path("", include("tutoring.urls")),
]
