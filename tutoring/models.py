"""Conversations between a learner and the tutor, and their messages."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from knowledge.models import Chunk, Course, Skill
from learners.models import Item


class Conversation(models.Model):
    learner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations"
    )
    course = models.ForeignKey(Course, on_delete=models.CASCADE, related_name="conversations")
    # A resource link's `skill=` parameter (LTI) focuses the conversation on one skill.
    focus_skill = models.ForeignKey(
        Skill, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    title = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"

    def group_name(self) -> str:
        """The channel-layer group its messages stream to."""
        return f"chat.{self.pk}"


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user", "Learner"
        ASSISTANT = "assistant", "Tutor"

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting for the model"
        STREAMING = "streaming", "Streaming"
        COMPLETE = "complete", "Complete"
        LENGTH = "length", "Cut at the length limit"
        STOPPED = "stopped", "Stopped"
        TIMEOUT = "timeout", "Timed out"
        ERROR = "error", "Failed"

    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    role = models.CharField(max_length=10, choices=Role.choices)
    content = models.TextField(blank=True)
    # The browser's id for a question: a resend is not a second question.
    client_id = models.CharField(max_length=64, blank=True)
    request_id = models.UUIDField(default=uuid.uuid4, unique=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.COMPLETE)
    error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    # The skill the answer teaches (the conversation's focus, else the best passage's first
    # skill): the skill of the check question offered after it.
    skill = models.ForeignKey(
        Skill, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    mode = models.CharField(max_length=20, blank=True)
    mode_reason = models.CharField(max_length=300, blank=True)
    citations = models.JSONField(default=list, blank=True)
    # "From your course material": the passage sentences that best answer the question,
    # verbatim, each with its citation number ({"n", "text", "score"}).
    extract = models.JSONField(default=list, blank=True)
    # The support check of each sentence the model wrote (tutoring.support.Judged as JSON):
    # a sentence with "supported" false is shown "not found in your course material".
    support = models.JSONField(default=list, blank=True)
    # False when no passage came close enough to the question (Course.covered_from): the tutor
    # said so and offered the closest sections instead of letting the model write an answer.
    covered = models.BooleanField(default=True)
    prompt_tokens = models.IntegerField(default=0)
    completion_tokens = models.IntegerField(default=0)
    ttft_ms = models.FloatField(null=True, blank=True)
    total_ms = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["conversation", "client_id"],
                condition=~models.Q(client_id=""),
                name="message_unique_client_id",
            )
        ]

    def __str__(self) -> str:
        return f"{self.get_role_display()}: {self.content[:60]}"

    def is_finished(self) -> bool:
        return self.status not in (self.Status.PENDING, self.Status.STREAMING)


class Check(models.Model):
    """A check question offered after an answer, and the learner's graded response to it."""

    class Status(models.TextChoices):
        OFFERED = "offered", "Offered"
        GRADING = "grading", "Being graded"
        GRADED = "graded", "Graded"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="checks")
    # The answer it follows: one check per answer, whatever the number of open tabs.
    after = models.OneToOneField(Message, on_delete=models.CASCADE, related_name="check_question")
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="checks")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OFFERED)
    response = models.TextField(blank=True)
    correct = models.BooleanField(null=True, blank=True)
    reason = models.CharField(max_length=300, blank=True)
    # "exact" (a choice), "model" (the LLM's verdict) or "words" (the answer's words settled it).
    graded_by = models.CharField(max_length=10, blank=True)
    # The mastery of the item's skill before and after the graded response.
    p_before = models.FloatField(null=True, blank=True)
    p_after = models.FloatField(null=True, blank=True)
    grading_request = models.UUIDField(null=True, blank=True)
    # The feedback once graded: the passage sentences that hold the expected answer, verbatim.
    extract = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    graded_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"Check {self.pk} on {self.item}"


class UncoveredQuestion(models.Model):
    """A question the course material does not cover: the instructors' "not covered by your
    material" report (what to add to the course). Asked again, the same row counts up."""

    course = models.ForeignKey(Course, on_delete=models.CASCADE, related_name="uncovered_questions")
    question = models.TextField()
    # The question in lower case with its spaces collapsed: the same question asked again.
    normalised = models.CharField(max_length=500)
    times_asked = models.PositiveIntegerField(default=1)
    first_asked_at = models.DateTimeField(auto_now_add=True)
    last_asked_at = models.DateTimeField(auto_now=True)
    # The closest section found, and how close it came (cosine similarity, 0-1).
    closest = models.CharField(max_length=500, blank=True)
    closest_chunk = models.ForeignKey(
        Chunk, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    closeness = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["-times_asked", "-last_asked_at"]
        verbose_name = "question not covered by your material"
        verbose_name_plural = "not covered by your material"
        constraints = [
            models.UniqueConstraint(
                fields=["course", "normalised"], name="uncovered_unique_question"
            )
        ]

    def __str__(self) -> str:
        return self.question[:80]
