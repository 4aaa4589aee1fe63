"""django-q2 entry points: thin, they call the services."""

from __future__ import annotations

import logging

from knowledge.models import Course
from learners import services

logger = logging.getLogger(__name__)


def fit_course(course_id: int) -> dict[str, int]:
    course = Course.objects.get(pk=course_id)
    used = services.fit_course(course=course)
    services.calibrate_items(course=course)
    services.train_policy(course=course)
    return used


def fit_all_courses() -> int:
    """The nightly refit: every course with attempts."""
    fitted = 0
    for course in Course.objects.filter(skills__attempts__isnull=False).distinct():
        fit_course(course.pk)
        fitted += 1
    logger.info("nightly refit: %d courses", fitted)
    return fitted
