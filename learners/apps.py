from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate

INSTRUCTOR_PERMISSIONS = {
    "skillparameters": ["view", "add", "change"],
    "skillbkt": ["view", "change"],
    "mastery": ["view"],
    "attempt": ["view"],
    "item": ["view", "add", "change", "delete"],
}


def _grant(sender: AppConfig, **kwargs: Any) -> None:
    from knowledge.services import grant_instructor_permissions

    grant_instructor_permissions("learners", INSTRUCTOR_PERMISSIONS)


class LearnersConfig(AppConfig):
    name = "learners"
    verbose_name = "Learner model"

    def ready(self) -> None:
        post_migrate.connect(_grant, sender=self)
