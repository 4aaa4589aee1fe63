from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate

INSTRUCTOR_PERMISSIONS = {"uncoveredquestion": ["view", "delete"]}


def _grant(sender: AppConfig, **kwargs: Any) -> None:
    from knowledge.services import grant_instructor_permissions

    grant_instructor_permissions("tutoring", INSTRUCTOR_PERMISSIONS)


class TutoringConfig(AppConfig):
    name = "tutoring"
    verbose_name = "Tutoring"

    def ready(self) -> None:
        post_migrate.connect(_grant, sender=self)
