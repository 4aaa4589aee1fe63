"""The learner model in the back office, limited to the courses the instructor teaches."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from knowledge.access import taught_courses
from knowledge.admin import CourseScopedAdmin
from knowledge.models import Course
from learners import services
from learners.models import (
    DEFAULT_PARAMS,
    Attempt,
    Item,
    Mastery,
    SkillBKT,
    SkillParameters,
    params_for,
)


def _fmt(values: tuple[float | None, ...]) -> str:
    if any(value is None for value in values[:4]):
        return "-"
    labels = ("L0", "T", "G", "S", "F")
    return "  ".join(
        f"{label} {value or 0:.3f}" for label, value in zip(labels, values, strict=True)
    )


class SkillParametersInline(admin.StackedInline):
    model = SkillParameters
    can_delete = False
    fields = ["set_l0", "set_t", "set_g", "set_s", "set_f", "fitted", "fit_summary"]
    readonly_fields = ["fitted", "fit_summary"]
    verbose_name = "parameters set by the instructor (leave empty to use fitted or defaults)"

    @admin.display(description="fitted")
    def fitted(self, row: SkillParameters) -> str:
        return _fmt((row.fit_l0, row.fit_t, row.fit_g, row.fit_s, row.fit_f))

    @admin.display(description="fit")
    def fit_summary(self, row: SkillParameters) -> str:
        if row.fitted_at is None:
            return "not fitted yet"
        return (
            f"{row.fit_attempts} attempts by {row.fit_learners} learners, "
            f"{row.fitted_at:%Y-%m-%d %H:%M}"
        )


@admin.register(SkillBKT)
class SkillBKTAdmin(CourseScopedAdmin):
    list_display = ["name", "course", "in_force", "default_values", "fitted_values", "set_values"]
    list_filter = ["course"]
    fields = ["name", "course"]
    readonly_fields = ["name", "course"]
    inlines = [SkillParametersInline]
    actions = ["fit_now"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return super().get_queryset(request).select_related("bkt", "course")

    def _row(self, skill: SkillBKT) -> SkillParameters | None:
        try:
            return skill.bkt
        except SkillParameters.DoesNotExist:
            return None

    @admin.display(description="in force")
    def in_force(self, skill: SkillBKT) -> str:
        params, source = params_for(skill)
        return format_html(
            '<strong>{}</strong><br><span class="quiet">{}</span>',
            SkillParameters.Source(source).label,
            _fmt(tuple(params.as_dict().values())),
        )

    @admin.display(description="defaults")
    def default_values(self, skill: SkillBKT) -> str:
        return _fmt(tuple(DEFAULT_PARAMS.as_dict().values()))

    @admin.display(description="fitted")
    def fitted_values(self, skill: SkillBKT) -> str:
        row = self._row(skill)
        return _fmt((row.fit_l0, row.fit_t, row.fit_g, row.fit_s, row.fit_f)) if row else "-"

    @admin.display(description="set by the instructor")
    def set_values(self, skill: SkillBKT) -> str:
        row = self._row(skill)
        return _fmt((row.set_l0, row.set_t, row.set_g, row.set_s, row.set_f)) if row else "-"

    @admin.action(description="Fit BKT now (the selected skills' courses, from their attempts)")
    def fit_now(self, request: HttpRequest, queryset: QuerySet[SkillBKT]) -> None:
        for course in Course.objects.filter(skills__in=queryset).distinct():
            used = services.fit_course(course=course)
            if used:
                self.message_user(
                    request,
                    f"{course}: fitted {len(used)} skills from {sum(used.values())} attempts.",
                )
            else:
                self.message_user(request, f"{course}: no attempts to fit yet.", messages.WARNING)


@admin.register(Mastery)
class MasteryAdmin(CourseScopedAdmin):
    course_path = "skill__course"
    list_display = ["learner", "skill", "p_known_bar", "mode_label", "attempts", "updated_at"]
    list_filter = ["skill__course", "skill"]
    search_fields = ["learner__username", "skill__name"]
    list_select_related = ["learner", "skill", "skill__course"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="p(L)", ordering="p_known")
    def p_known_bar(self, mastery: Mastery) -> str:
        return format_html(
            '<meter min="0" max="1" value="{}"></meter> {}',
            mastery.p_known,
            f"{mastery.p_known:.2f}",
        )

    @admin.display(description="mode")
    def mode_label(self, mastery: Mastery) -> str:
        return mastery.mode()


@admin.register(Attempt)
class AttemptAdmin(CourseScopedAdmin):
    course_path = "skill__course"
    list_display = ["created_at", "learner", "skill", "correct", "source", "p_before", "p_after"]
    list_filter = ["skill__course", "source", "correct"]
    search_fields = ["learner__username", "skill__name", "key"]
    list_select_related = ["learner", "skill"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Item)
class ItemAdmin(CourseScopedAdmin):
    list_display = ["stem", "skill", "kind", "status", "source", "irt_a", "irt_b", "irt_c"]
    list_filter = ["course", "status", "kind", "source", "skill"]
    search_fields = ["stem"]
    list_editable = ["status"]
    actions = ["approve"]

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "skill" and not request.user.is_superuser:
            from knowledge.models import Skill

            kwargs["queryset"] = Skill.objects.filter(course__in=taught_courses(request.user))
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    @admin.action(description="Approve the selected items")
    def approve(self, request: HttpRequest, queryset: QuerySet[Item]) -> None:
        updated = queryset.update(status=Item.Status.APPROVED)
        self.message_user(request, f"{updated} item(s) approved.")
