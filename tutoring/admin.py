"""The instructors' back office for tutoring: the "not covered by your material" report."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from knowledge.admin import CourseScopedAdmin
from tutoring.models import UncoveredQuestion


@admin.register(UncoveredQuestion)
class UncoveredQuestionAdmin(CourseScopedAdmin):
    """Questions learners asked that no passage of the course came close to: the cheapest
    signal of what to add to the material. Delete a row once the material covers it."""

    list_display = ["question", "course", "times_asked", "last_asked_at", "closest", "closeness"]
    list_filter = ["course"]
    search_fields = ["question", "closest"]
    date_hierarchy = "last_asked_at"
    readonly_fields = [
        "course",
        "question",
        "times_asked",
        "first_asked_at",
        "last_asked_at",
        "closest",
        "closest_chunk",
        "closeness",
    ]
    exclude = ["normalised"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
