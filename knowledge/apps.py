from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _grant(sender: AppConfig, **kwargs: Any) -> None:
    from knowledge.services import INSTRUCTOR_PERMISSIONS, grant_instructor_permissions

    grant_instructor_permissions("knowledge", INSTRUCTOR_PERMISSIONS)


class KnowledgeConfig(AppConfig):
    name = "knowledge"
    verbose_name = "Courses and knowledge base"

    def ready(self) -> None:
        post_migrate.connect(_grant, sender=self)
