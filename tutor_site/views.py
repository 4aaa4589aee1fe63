"""Site-wide pages: the home page and the health report."""

from __future__ import annotations

import logging
from typing import Any, cast

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from knowledge import embedding
from knowledge.access import courses_for
from knowledge.models import Document, Enrollment
from tutoring import llm

logger = logging.getLogger(__name__)


@login_required
def home(request: HttpRequest) -> HttpResponse:
    memberships = (
        Enrollment.objects.filter(user=cast(User, request.user))
        .select_related("course")
        .order_by("course__title")
    )
    courses = []
    for membership in memberships:
        course = membership.course
        documents = Document.objects.filter(course=course)
        courses.append(
            {
                "course": course,
                "role": membership.get_role_display(),
                "teaches": membership.role == Enrollment.Role.INSTRUCTOR,
                "documents": documents.count(),
                "ready": documents.filter(status=Document.Status.READY).count(),
                "skills": course.skills.count(),
            }
        )
    return render(
        request, "home.html", {"courses": courses, "any": courses_for(request.user).exists()}
    )


def _database_status() -> dict[str, Any]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('server_version')")
            server = cursor.fetchone()
            cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            vector = cursor.fetchone()
        return {
            "ok": vector is not None,
            "server": server[0] if server else None,
            "pgvector": vector[0] if vector else None,
        }
    except Exception as exc:
        logger.warning("health: database unreachable: %s", exc)
        return {"ok": False, "error": str(exc)}


def _queue_status() -> dict[str, Any]:
    try:
        from django_q.brokers import get_broker
        from django_q.status import Stat

        broker = get_broker()
        clusters = Stat.get_all(broker=broker)
        return {
            "ok": True,
            "broker": "redis" if settings.REDIS_URL else "orm",
            "clusters": len(clusters),
            "workers": sum(len(stat.workers) for stat in clusters),
            "queued": broker.queue_size(),
        }
    except Exception as exc:
        logger.warning("health: queue unreachable: %s", exc)
        return {"ok": False, "error": str(exc)}


def _models_status() -> dict[str, Any]:
    llm_path = llm.model_path()
    return {
        "embedding": {
            "ok": embedding.is_available(),
            "path": str(embedding.model_path()),
            "loaded": embedding.is_loaded(),
        },
        "llm": {
            "ok": bool(llm_path and llm_path.exists()),
            "path": str(llm_path) if llm_path else None,
        },
    }


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    database = _database_status()
    queue = _queue_status() if database["ok"] else {"ok": False, "error": "no database"}
    models = _models_status()
    healthy = database["ok"] and queue["ok"] and all(model["ok"] for model in models.values())
    body = {
        "status": "ok" if healthy else "degraded",
        "database": database,
        "queue": queue,
        "models": models,
    }
    return JsonResponse(body, status=200 if database["ok"] else 503)
