"""Who may see and change which course. Every app asks these questions through here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404

from knowledge.models import Course, Document, Enrollment

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

    AnyUser = AbstractBaseUser | AnonymousUser


def courses_for(user: AnyUser, role: str | None = None) -> QuerySet[Course]:
    if not user.is_authenticated:
        return Course.objects.none()
    memberships = Enrollment.objects.filter(user_id=user.pk)
    if role is not None:
        memberships = memberships.filter(role=role)
    return Course.objects.filter(pk__in=memberships.values("course_id"))


def taught_courses(user: AnyUser) -> QuerySet[Course]:
    return courses_for(user, Enrollment.Role.INSTRUCTOR)


def _course(slug: str) -> Course:
    course = Course.objects.filter(slug=slug).first()
    if course is None:
        raise Http404(f"no course {slug!r}")
    return course


def get_course_for_member(user: AnyUser, slug: str) -> Course:
    """The course, if the user takes or teaches it: 404 for an unknown slug, 403 otherwise."""
    course = _course(slug)
    if not course.has_member(user):
        raise PermissionDenied("you are not a member of this course")
    return course


def get_course_for_instructor(user: AnyUser, slug: str) -> Course:
    """The course, if the user teaches it: 404 for an unknown slug, 403 otherwise."""
    course = _course(slug)
    if not course.is_taught_by(user):
        raise PermissionDenied("only the course's instructors may do this")
    return course


def get_document_for_instructor(user: AnyUser, document_id: int) -> Document:
    document = Document.objects.select_related("course").filter(pk=document_id).first()
    if document is None:
        raise Http404(f"no document {document_id}")
    if not document.course.is_taught_by(user):
        raise PermissionDenied("only the course's instructors may see its documents")
    return document
