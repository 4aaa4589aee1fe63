"""The knowledge base's API for scripts: upload, document progress, search."""

from __future__ import annotations

import logging
from typing import Any, cast

from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.uploadedfile import UploadedFile
from rest_framework import serializers, status
from rest_framework.decorators import api_view
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from knowledge import retrieval, services
from knowledge.access import (
    courses_for,
    get_course_for_instructor,
    get_course_for_member,
    get_document_for_instructor,
)
from knowledge.models import Course, Document

logger = logging.getLogger(__name__)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus a flat `error` message and a log line for every refusal."""
    response = drf_exception_handler(exc, context)
    if response is not None:
        request = context.get("request")
        detail = response.data.get("detail") if isinstance(response.data, dict) else None
        if detail is not None:
            response.data = {"error": str(detail)}
        logger.warning(
            "API %s %s refused with %s: %s",
            getattr(request, "method", "?"),
            getattr(request, "path", "?"),
            response.status_code,
            response.data,
        )
    return response


class DocumentSerializer(serializers.ModelSerializer[Document]):
    progress = serializers.SerializerMethodField()
    course: serializers.SlugRelatedField[Course] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )

    class Meta:
        model = Document
        fields = [
            "id",
            "course",
            "title",
            "original_filename",
            "size_bytes",
            "content_hash",
            "status",
            "error",
            "chunks_done",
            "chunks_total",
            "progress",
            "created_at",
            "finished_at",
        ]

    def get_progress(self, document: Document) -> float:
        return round(document.progress(), 4)


class CourseSerializer(serializers.ModelSerializer[Course]):
    class Meta:
        model = Course
        fields = ["slug", "title", "description"]


def refuse(message: str, code: int, **extra: Any) -> Response:
    """A refusal as JSON `{"error": ..., **extra}`, logged; the API's one shape for bad input."""
    logger.warning("API refused with %s: %s", code, message)
    return Response({"error": message, **extra}, status=code)


@api_view(["GET"])
def course_list(request: Request) -> Response:
    courses = courses_for(request.user)
    return Response(CourseSerializer(courses, many=True).data)


@api_view(["GET", "POST"])
def course_documents(request: Request, slug: str) -> Response:
    if request.method == "GET":
        course = get_course_for_instructor(request.user, slug)
        documents = Document.objects.filter(course=course).select_related("course")
        return Response(DocumentSerializer(documents, many=True).data)
    # Refuse before the body is parsed: a declared length far over the limit is never read.
    declared = int(request.META.get("CONTENT_LENGTH") or 0)
    course = get_course_for_instructor(request.user, slug)
    limit = settings.TUTOR_MAX_UPLOAD_BYTES
    if declared > limit + 1024 * 1024:
        return refuse(
            f"the upload of {declared:,} bytes is over the limit of {limit:,} bytes",
            413,
        )
    files: list[UploadedFile] = request.FILES.getlist("file")
    oversized = getattr(request._request, "oversized_files", [])
    if oversized:
        return refuse(
            f"over the upload limit of {limit:,} bytes: {', '.join(oversized)}",
            413,
        )
    if not files:
        return refuse("no file: send one or more files in the multipart field `file`", 400)
    title = str(request.data.get("title", "")) if len(files) == 1 else ""
    results = []
    for upload in files:
        try:
            services.check_upload(filename=upload.name or "", size=upload.size or 0)
        except services.KnowledgeError as exc:
            return refuse(exc.message, exc.status)
    for upload in files:
        result = services.add_document(
            course=course,
            filename=upload.name or "document",
            content=upload,
            uploaded_by=cast(User, request.user),
            title=title,
        )
        data = DocumentSerializer(result.document).data
        data["duplicate"] = not result.created
        results.append(data)
    any_new = any(not item["duplicate"] for item in results)
    return Response(results, status=status.HTTP_202_ACCEPTED if any_new else status.HTTP_200_OK)


@api_view(["GET"])
def document_detail(request: Request, document_id: int) -> Response:
    document = get_document_for_instructor(request.user, document_id)
    return Response(DocumentSerializer(document).data)


@api_view(["GET"])
def course_search(request: Request, slug: str) -> Response:
    course = get_course_for_member(request.user, slug)
    query = request.query_params.get("q", "")
    raw_k = request.query_params.get("k", "5")
    try:
        k = int(raw_k)
    except ValueError as exc:
        raise ValidationError({"error": f"k must be an integer, got {raw_k!r}"}) from exc
    try:
        hits = retrieval.search(course, query, k)
    except retrieval.SearchError as exc:
        return refuse(str(exc), 400)
    return Response(
        {"course": course.slug, "query": query, "k": k, "results": [hit.as_dict() for hit in hits]}
    )
