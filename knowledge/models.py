"""What is taught and to whom: courses, their members, skills, documents and chunks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVector, SearchVectorField
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from pgvector.django import HnswIndex, VectorField

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

EMBEDDING_DIMENSIONS = 384


class Course(models.Model):
    slug = models.SlugField(max_length=80, unique=True)
    title = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # The mode table of DESIGN.md: p(L) below `foundational_below` is foundational, at or above
    # `advanced_from` advanced, scaffolded between. Prerequisites count as met from
    # `advanced_from` on.
    foundational_below = models.FloatField(
        default=0.40, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)]
    )
    advanced_from = models.FloatField(
        default=0.75, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)]
    )
    # A question whose closest passage is less similar than this (cosine, the embedding model)
    # is not covered by the course material: the tutor says so instead of letting the model
    # answer, and the question goes to the instructors' "not covered" report. Measured on the
    # demo course (all-MiniLM-L6-v2): its 30 questions came 0.26-0.72 close, 18 questions on
    # other subjects 0.05-0.21.
    covered_from = models.FloatField(
        "covered from",
        default=0.23,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text=(
            "A question whose closest passage is less similar than this (0-1) is answered "
            "'not covered by your course material' and listed in the not-covered report."
        ),
    )

    class Meta:
        ordering = ["title"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(foundational_below__lte=models.F("advanced_from")),
                name="course_thresholds_ordered",
            )
        ]

    def __str__(self) -> str:
        return self.title

    def role_of(self, user: AbstractBaseUser | AnonymousUser) -> str | None:
        """The user's role in this course ('instructor', 'learner') or None."""
        if not user.is_authenticated:
            return None
        enrollment = self.enrollments.filter(user_id=user.pk).only("role").first()
        return enrollment.role if enrollment else None

    def is_taught_by(self, user: AbstractBaseUser | AnonymousUser) -> bool:
        return self.role_of(user) == Enrollment.Role.INSTRUCTOR

    def has_member(self, user: AbstractBaseUser | AnonymousUser) -> bool:
        return self.role_of(user) is not None


class Enrollment(models.Model):
    class Role(models.TextChoices):
        INSTRUCTOR = "instructor", "Instructor"
        LEARNER = "learner", "Learner"

    course = models.ForeignKey(Course, on_delete=models.CASCADE, related_name="enrollments")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="enrollments"
    )
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.LEARNER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["course", "user"], name="enrollment_unique_member")
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.course} as {self.role}"


class Skill(models.Model):
    course = models.ForeignKey(Course, on_delete=models.CASCADE, related_name="skills")
    name = models.CharField(max_length=120)
    description = models.TextField(blank=True)
    prerequisites = models.ManyToManyField(
        "self", symmetrical=False, blank=True, related_name="unlocks"
    )

    class Meta:
        ordering = ["course", "name"]
        constraints = [models.UniqueConstraint(fields=["course", "name"], name="skill_unique_name")]

    def __str__(self) -> str:
        return self.name

    def prerequisites_unmet(self, learner: AbstractBaseUser | AnonymousUser) -> list[Skill]:
        """Prerequisites whose mastery is under the course's threshold (none recorded counts)."""
        met = self.prerequisites.filter(
            masteries__learner_id=learner.pk, masteries__p_known__gte=self.course.advanced_from
        )
        return list(self.prerequisites.exclude(pk__in=met.values("pk")).order_by("name"))

    def tagging_text(self) -> str:
        """What a chunk is compared with to decide whether it teaches this skill."""
        return f"{self.name}: {self.description}" if self.description else self.name


def _document_path(instance: Document, filename: str) -> str:
    return f"documents/{instance.course.slug}/{instance.content_hash[:2]}/{filename}"


class Document(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        PROCESSING = "processing", "Processing"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    course = models.ForeignKey(Course, on_delete=models.CASCADE, related_name="documents")
    title = models.CharField(max_length=300)
    original_filename = models.CharField(max_length=255)
    file = models.FileField(upload_to=_document_path, max_length=500)
    content_hash = models.CharField(max_length=64)
    size_bytes = models.BigIntegerField(default=0)
    status = models.CharField(
        max_length=20, choices=Status.choices, default=Status.PENDING, db_index=True
    )
    error = models.TextField(blank=True)
    chunks_total = models.IntegerField(default=0)
    chunks_done = models.IntegerField(default=0)
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Touched after every batch; a `processing` document whose heartbeat is old lost its worker.
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["course", "title"]
        constraints = [
            models.UniqueConstraint(
                fields=["course", "content_hash"], name="document_unique_content"
            )
        ]

    def __str__(self) -> str:
        return self.title

    def is_ready(self) -> bool:
        return self.status == self.Status.READY

    def is_finished(self) -> bool:
        return self.status in (self.Status.READY, self.Status.FAILED)

    def progress(self) -> float:
        """Share of chunks embedded and written, 0..1 (1 once ready)."""
        if self.status == self.Status.READY:
            return 1.0
        if self.chunks_total <= 0:
            return 0.0
        return min(1.0, self.chunks_done / self.chunks_total)

    def extension(self) -> str:
        return (
            self.original_filename.rsplit(".", 1)[-1].lower()
            if "." in self.original_filename
            else ""
        )


class Chunk(models.Model):
    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="chunks")
    # Denormalised from the document so every search filters by course in one indexed column.
    course = models.ForeignKey(Course, on_delete=models.CASCADE, related_name="chunks")
    ordinal = models.IntegerField()
    text = models.TextField()
    heading = models.CharField(max_length=500, blank=True)
    token_count = models.IntegerField()
    locator = models.CharField(max_length=500, blank=True)
    page = models.IntegerField(null=True, blank=True)
    embedding = VectorField(dimensions=EMBEDDING_DIMENSIONS)
    # The embeddings of the text's sentences (knowledge.sentences.split), float32 rows: filled
    # after ingestion or on first use, read when the tutor quotes or checks against the passage.
    sentence_vectors = models.BinaryField(null=True, blank=True, editable=False)
    search = models.GeneratedField(
        expression=SearchVector("heading", weight="A", config="english")
        + SearchVector("text", weight="B", config="english"),
        output_field=SearchVectorField(),
        db_persist=True,
    )
    skills: models.ManyToManyField[Skill, ChunkSkill] = models.ManyToManyField(
        Skill, through="ChunkSkill", related_name="chunks", blank=True
    )

    class Meta:
        ordering = ["document", "ordinal"]
        constraints = [
            models.UniqueConstraint(fields=["document", "ordinal"], name="chunk_unique_ordinal")
        ]
        indexes = [
            HnswIndex(
                name="chunk_embedding_hnsw",
                fields=["embedding"],
                # m=32 and ef_construction=200 rather than pgvector's 16 and 64: on a dense
                # 100k-passage corpus (bench/retrieval.py) recall@10 goes from 0.81 to 0.96 at
                # ef_search 400, for a build about 3x slower.
                m=32,
                ef_construction=200,
                opclasses=["vector_cosine_ops"],
            ),
            GinIndex(fields=["search"], name="chunk_search_gin"),
        ]

    def __str__(self) -> str:
        return f"{self.document} #{self.ordinal}"


class ChunkSkill(models.Model):
    """A chunk teaches a skill: found by embedding similarity, or set by an instructor."""

    class Source(models.TextChoices):
        AUTO = "auto", "Automatic"
        INSTRUCTOR = "instructor", "Instructor"

    chunk = models.ForeignKey(Chunk, on_delete=models.CASCADE, related_name="skill_links")
    skill = models.ForeignKey(Skill, on_delete=models.CASCADE, related_name="chunk_links")
    score = models.FloatField(null=True, blank=True)
    source = models.CharField(max_length=20, choices=Source.choices, default=Source.INSTRUCTOR)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["chunk", "skill"], name="chunkskill_unique")]

    def __str__(self) -> str:
        return f"{self.chunk} teaches {self.skill}"
