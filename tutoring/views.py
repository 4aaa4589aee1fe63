"""The learner's pages: a course (mastery per skill, past conversations) and the chat."""

from __future__ import annotations

import logging
from typing import Any, cast

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from knowledge.access import get_course_for_member
from knowledge.models import Course, Skill
from learners.models import Mastery, mode_for, params_for
from tutoring import services
from tutoring.models import Conversation

logger = logging.getLogger(__name__)


def skill_rows(learner: User, course: Course) -> list[dict[str, Any]]:
    """Every skill of the course with the learner's p(L) (the prior when never practised)."""
    known = {
        row.skill_id: row for row in Mastery.objects.filter(learner=learner, skill__course=course)
    }
    rows = []
    for skill in course.skills.prefetch_related("prerequisites").order_by("name"):
        row = known.get(skill.pk)
        p_known = row.p_known if row is not None else params_for(skill)[0].p_l0
        rows.append(
            {
                "id": skill.pk,
                "name": skill.name,
                "p_known": round(p_known, 4),
                "percent": round(p_known * 100),
                "mode": mode_for(p_known, course),
                "attempts": row.attempts if row is not None else 0,
                "prerequisites": [p.name for p in skill.prerequisites.all()],
            }
        )
    return rows


@login_required
@require_GET
def course_page(request: HttpRequest, slug: str) -> HttpResponse:
    user = cast(User, request.user)
    course = get_course_for_member(user, slug)
    conversations = Conversation.objects.filter(learner=user, course=course).order_by(
        "-updated_at"
    )[:50]
    return render(
        request,
        "tutoring/course.html",
        {
            "course": course,
            "skills": skill_rows(user, course),
            "conversations": conversations,
            "teaches": course.is_taught_by(user),
        },
    )


@login_required
@require_POST
def new_conversation(request: HttpRequest, slug: str) -> HttpResponse:
    user = cast(User, request.user)
    course = get_course_for_member(user, slug)
    focus = None
    raw = request.POST.get("skill", "")
    if raw:
        focus = Skill.objects.filter(course=course, pk=int(raw) if raw.isdigit() else -1).first()
        if focus is None:
            messages.error(request, "That skill is not part of this course.")
            logger.warning("user %s asked for unknown skill %r in %s", user.pk, raw, slug)
            return redirect("tutoring:course", slug=course.slug)
    try:
        conversation = services.start_conversation(learner=user, course=course, focus_skill=focus)
    except services.TutoringError as exc:
        messages.error(request, str(exc))
        return redirect("tutoring:course", slug=course.slug)
    return redirect("tutoring:chat", conversation=conversation.pk)


@login_required
@require_GET
def chat_page(request: HttpRequest, conversation: int) -> HttpResponse:
    user = cast(User, request.user)
    found = (
        Conversation.objects.select_related("course", "focus_skill")
        .filter(pk=conversation, learner=user)
        .first()
    )
    if found is None or not found.course.has_member(user):
        raise Http404("no such conversation")
    return render(
        request,
        "tutoring/chat.html",
        {
            "conversation": found,
            "course": found.course,
            "skills": skill_rows(user, found.course),
            "settings_json": {
                "conversation": found.pk,
                "socketPath": f"/ws/chat/{found.pk}/",
            },
        },
    )
