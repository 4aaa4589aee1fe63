"""The learner model's API: attempts, mastery, items."""

from __future__ import annotations

from typing import Any, cast

from django.contrib.auth.models import User
from django.shortcuts import get_object_or_404
from rest_framework import serializers, status
from rest_framework.decorators import api_view
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response

from knowledge.access import courses_for, get_course_for_instructor
from knowledge.api import refuse
from knowledge.models import Skill
from learners import services
from learners.models import Attempt, Item, Mastery, mode_for, params_for


def _invalid(errors: dict[str, Any]) -> Response:
    """400 naming the first field a serializer refused."""
    field, problems = next(iter(errors.items()))
    return refuse(f"{field}: {' '.join(str(p) for p in problems)}", 400, field=field)


class AttemptIn(serializers.Serializer[dict[str, Any]]):
    skill = serializers.IntegerField()
    item = serializers.IntegerField(required=False, allow_null=True)
    correct = serializers.BooleanField()
    key = serializers.CharField(max_length=200)
    # A declared field named like Field.source, which DRF allows on a serializer.
    source = serializers.ChoiceField(  # type: ignore[assignment]
        choices=Attempt.Source.choices, default=Attempt.Source.API
    )


@api_view(["POST"])
def attempts(request: Request) -> Response:
    """Record a graded response of the calling learner; idempotent on `key`."""
    form = AttemptIn(data=request.data)
    if not form.is_valid():
        return _invalid(form.errors)
    data = form.validated_data
    skill = Skill.objects.select_related("course").filter(pk=data["skill"]).first()
    if skill is None:
        return refuse(f"unknown skill {data['skill']}", 400, field="skill")
    item = None
    if data.get("item") is not None:
        item = Item.objects.filter(pk=data["item"], skill=skill).first()
        if item is None:
            return refuse(f"unknown item {data['item']} for this skill", 400, field="item")
    user = cast(User, request.user)
    if not skill.course.has_member(user):
        raise PermissionDenied("you are not a member of this skill's course")
    try:
        result = services.record_attempt(
            learner=user,
            skill=skill,
            correct=data["correct"],
            source=data["source"],
            key=data["key"],
            item=item,
        )
    except services.LearnerError as exc:
        return refuse(exc.message, exc.status, field=exc.field)
    body = {
        "attempt": result.attempt.pk,
        "skill": skill.pk,
        "correct": result.attempt.correct,
        "p_known": round(result.p_known, 6),
        "mode": result.mode,
        "attempts": result.attempts,
        "duplicate": not result.created,
    }
    return Response(body, status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK)


def _mastery_rows(user_ids: list[int], skills: list[Skill]) -> list[dict[str, Any]]:
    stored = {
        (row.learner_id, row.skill_id): row
        for row in Mastery.objects.filter(learner_id__in=user_ids, skill__in=skills)
    }
    rows = []
    for user_id in user_ids:
        for skill in skills:
            row = stored.get((user_id, skill.pk))
            p_known = row.p_known if row else params_for(skill)[0].p_l0
            rows.append(
                {
                    "learner": user_id,
                    "course": skill.course.slug,
                    "skill": skill.pk,
                    "skill_name": skill.name,
                    "p_known": round(p_known, 6),
                    "mode": mode_for(p_known, skill.course),
                    "attempts": row.attempts if row else 0,
                    "updated_at": row.updated_at if row else None,
                }
            )
    return rows


@api_view(["GET"])
def my_mastery(request: Request) -> Response:
    """The caller's mastery of every skill of every course they are in (priors where unseen)."""
    skills = list(
        Skill.objects.filter(course__in=courses_for(request.user))
        .select_related("course", "bkt")
        .order_by("course__slug", "name")
    )
    rows = _mastery_rows([cast(int, request.user.pk)], skills)
    for row in rows:
        del row["learner"]
    return Response(rows)


@api_view(["GET"])
def course_mastery(request: Request, slug: str) -> Response:
    """Every learner's mastery of every skill of the course: its instructors only."""
    course = get_course_for_instructor(request.user, slug)
    skills = list(course.skills.select_related("course", "bkt").order_by("name"))
    learners = list(
        course.enrollments.filter(role="learner")
        .order_by("user__username")
        .values_list("user_id", "user__username")
    )
    names = dict(learners)
    rows = _mastery_rows([user_id for user_id, _ in learners], skills)
    for row in rows:
        row["username"] = names[row["learner"]]
    return Response(rows)


class ItemSerializer(serializers.ModelSerializer[Item]):
    class Meta:
        model = Item
        fields = [
            "id",
            "skill",
            "stem",
            "choices",
            "answer",
            "kind",
            "irt_a",
            "irt_b",
            "irt_c",
            "status",
            "source",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "created_at", "updated_at"]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        from django.core.exceptions import ValidationError as DjangoValidationError

        course = self.context["course"]
        instance = Item(course=course, **{**self._current(), **attrs})
        try:
            instance.clean()
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict) from exc
        return attrs

    def _current(self) -> dict[str, Any]:
        if self.instance is None:
            return {}
        item = self.instance
        return {
            field: getattr(item, field)
            for field in self.Meta.fields
            if field not in ("id", "created_at", "updated_at")
        }


def _item_response(serializer: ItemSerializer) -> Response | None:
    if serializer.is_valid():
        return None
    return _invalid(serializer.errors)


@api_view(["GET", "POST"])
def course_items(request: Request, slug: str) -> Response:
    course = get_course_for_instructor(request.user, slug)
    if request.method == "GET":
        items = Item.objects.filter(course=course).order_by("skill__name", "id")
        return Response(ItemSerializer(items, many=True).data)
    serializer = ItemSerializer(data=request.data, context={"course": course})
    refused = _item_response(serializer)
    if refused is not None:
        return refused
    item = serializer.save(course=course)
    return Response(ItemSerializer(item).data, status=status.HTTP_201_CREATED)


@api_view(["GET", "PUT", "PATCH", "DELETE"])
def item_detail(request: Request, item_id: int) -> Response:
    item = get_object_or_404(Item.objects.select_related("course"), pk=item_id)
    if not item.course.is_taught_by(request.user):
        raise PermissionDenied("only the course's instructors may manage its items")
    if request.method == "GET":
        return Response(ItemSerializer(item).data)
    if request.method == "DELETE":
        item.delete()
        return Response(status=status.HTTP_204_NO_CONTENT)
    serializer = ItemSerializer(
        item, data=request.data, partial=request.method == "PATCH", context={"course": item.course}
    )
    refused = _item_response(serializer)
    if refused is not None:
        return refused
    return Response(ItemSerializer(serializer.save()).data)
