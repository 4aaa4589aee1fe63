from __future__ import annotations

from django.apps import AppConfig


class TutoringConfig(AppConfig):
    name = "tutoring"
    verbose_name = "Tutoring"
