"""Writes to the knowledge base. Views, commands and the admin call these, never the ORM."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.files import File
from django.db import IntegrityError, transaction
from django.utils.text import get_valid_filename

from knowledge.models import Chunk, ChunkSkill, Course, Document, Enrollment, Skill
from knowledge.parsers import SUPPORTED_EXTENSIONS

if TYPE_CHECKING:
    from django.contrib.auth.models import User

logger = logging.getLogger(__name__)


class KnowledgeError(Exception):
    """A request the knowledge base refuses; `status` is the HTTP status that fits."""

    status = 400

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


@dataclass
class UploadResult:
    document: Document
    created: bool


def title_from_filename(filename: str) -> str:
    stem = os.path.splitext(os.path.basename(filename))[0]
    return stem.replace("_", " ").replace("-", " ").strip().capitalize() or filename


def check_upload(*, filename: str, size: int) -> None:
    """Refuse what is refused at the door: an unsupported type, or a file over the size limit."""
    extension = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    if extension not in SUPPORTED_EXTENSIONS:
        raise KnowledgeError(
            f"{filename}: unsupported file type; supported: "
            + ", ".join("." + ext for ext in SUPPORTED_EXTENSIONS)
        )
    limit = settings.TUTOR_MAX_UPLOAD_BYTES
    if size > limit:
        raise KnowledgeError(
            f"{filename}: {size:,} bytes is over the upload limit of {limit:,} bytes", status=413
        )


def add_document(
    *,
    course: Course,
    filename: str,
    content: File,
    uploaded_by: User | None = None,
    title: str = "",
) -> UploadResult:
    """Store a file and queue its ingestion. Identical content already in the course is a no-op."""
    filename = get_valid_filename(os.path.basename(filename)) or "document"
    check_upload(filename=filename, size=content.size)
    digest = hashlib.sha256()
    for piece in content.chunks():
        digest.update(piece)
    content_hash = digest.hexdigest()
    existing = Document.objects.filter(course=course, content_hash=content_hash).first()
    if existing is not None:
        logger.info(
            "upload of %s to %s: same content as document %s", filename, course.slug, existing.pk
        )
        return UploadResult(existing, created=False)
    document = Document(
        course=course,
        title=(title or title_from_filename(filename))[:300],
        original_filename=filename,
        content_hash=content_hash,
        size_bytes=content.size,
        uploaded_by=uploaded_by,
    )
    content.seek(0)
    try:
        with transaction.atomic():
            document.file.save(filename, content, save=False)
            document.save()
            transaction.on_commit(lambda: enqueue_ingestion(document.pk))
    except IntegrityError:
        # race: a concurrent upload of the same content won; it is the same document.
        document.file.delete(save=False)
        winner = Document.objects.get(course=course, content_hash=content_hash)
        return UploadResult(winner, created=False)
    logger.info(
        "queued %s (%d bytes) for %s as document %s",
        filename,
        content.size,
        course.slug,
        document.pk,
    )
    return UploadResult(document, created=True)


def enqueue_ingestion(document_id: int) -> None:
    from django_q.tasks import async_task

    async_task(
        "knowledge.tasks.ingest_document",
        document_id,
        task_name=f"ingest-document-{document_id}",
        group="ingestion",
    )


@transaction.atomic
def reindex_document(*, document: Document) -> None:
    """Throw the chunks away and ingest the stored file again."""
    document.chunks.all().delete()
    Document.objects.filter(pk=document.pk).update(
        status=Document.Status.PENDING,
        error="",
        chunks_done=0,
        chunks_total=0,
        started_at=None,
        finished_at=None,
        heartbeat_at=None,
    )
    transaction.on_commit(lambda: enqueue_ingestion(document.pk))


def delete_document(*, document: Document) -> None:
    storage, name = document.file.storage, document.file.name
    with transaction.atomic():
        document.delete()
        if name:
            transaction.on_commit(lambda: storage.delete(name))


@transaction.atomic
def create_course(*, slug: str, title: str, description: str = "") -> Course:
    course = Course(slug=slug, title=title, description=description)
    course.full_clean()
    course.save()
    return course


@transaction.atomic
def enroll(*, course: Course, user: User, role: str) -> Enrollment:
    if role not in Enrollment.Role.values:
        raise KnowledgeError(
            f"unknown role {role!r}; use one of {', '.join(Enrollment.Role.values)}"
        )
    enrollment, _ = Enrollment.objects.update_or_create(
        course=course, user=user, defaults={"role": role}
    )
    return enrollment


def tag_chunks(*, chunks: Iterable[Chunk] | None = None, course: Course) -> int:
    """Link chunks to the course skills they teach, by embedding similarity.

    Links an instructor made stay; automatic links are recomputed. Returns the links made.
    """
    import numpy as np

    from knowledge import embedding

    skills = list(Skill.objects.filter(course=course))
    rows = list(chunks) if chunks is not None else list(Chunk.objects.filter(course=course))
    if not rows:
        return 0
    with transaction.atomic():
        ChunkSkill.objects.filter(
            chunk__in=[row.pk for row in rows], source=ChunkSkill.Source.AUTO
        ).delete()
        if not skills:
            return 0
        skill_vectors = embedding.embed_cached([skill.tagging_text() for skill in skills])
        chunk_vectors = np.vstack([np.asarray(row.embedding, dtype=np.float32) for row in rows])
        similarity = chunk_vectors @ skill_vectors.T
        # Over the threshold, and close to the chunk's best match: a passage about lockout that
        # mentions hazards teaches lockout, not everything it brushes against.
        floor = np.maximum(
            settings.TUTOR_SKILL_TAG_THRESHOLD,
            similarity.max(axis=1, keepdims=True) - settings.TUTOR_SKILL_TAG_MARGIN,
        )
        links = [
            ChunkSkill(
                chunk=row, skill=skill, score=float(similarity[i, j]), source=ChunkSkill.Source.AUTO
            )
            for i, row in enumerate(rows)
            for j, skill in enumerate(skills)
            if similarity[i, j] >= floor[i, 0]
        ]
        ChunkSkill.objects.bulk_create(links, ignore_conflicts=True)
    return len(links)


INSTRUCTOR_GROUP = "Instructors"
INSTRUCTOR_PERMISSIONS = {
    "course": ["view", "change"],
    "enrollment": ["view", "add", "change", "delete"],
    "skill": ["view", "add", "change", "delete"],
    "document": ["view", "add", "change", "delete"],
    "chunk": ["view", "change"],
    "chunkskill": ["view", "add", "change", "delete"],
}


def grant_instructor_permissions(app_label: str, permissions: dict[str, list[str]]) -> None:
    """Give the Instructors group these model permissions of an app (each app grants its own,
    after its migrations; the admin then limits every row to the instructor's courses)."""
    from django.contrib.auth.models import Group, Permission

    group, _ = Group.objects.get_or_create(name=INSTRUCTOR_GROUP)
    wanted = [f"{action}_{model}" for model, actions in permissions.items() for action in actions]
    group.permissions.add(
        *Permission.objects.filter(content_type__app_label=app_label, codename__in=wanted)
    )


@transaction.atomic
def make_instructor_staff(*, user: User) -> None:
    """Let an instructor into the back office, where they see only the courses they teach."""
    from django.contrib.auth.models import Group

    grant_instructor_permissions("knowledge", INSTRUCTOR_PERMISSIONS)
    group = Group.objects.get(name=INSTRUCTOR_GROUP)
    user.groups.add(group)
    if not user.is_staff:
        user.is_staff = True
        user.save(update_fields=["is_staff"])
