"""What the tool remembers about Moodle, beside django-lti's own tables (`lti_tool`).

django-lti keeps the registrations, deployments, keys and what launches said (LtiUser,
LtiContext, LtiMembership, LtiResourceLink). These tables tie them to the rest of the app:
which local account a platform user is, which course a platform course is, where grades go,
and which id_token nonces are spent.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from lti_tool.models import LtiContext, LtiRegistration, LtiResourceLink

from knowledge.models import Course, Skill


class UsedNonce(models.Model):
    """An id_token nonce already spent. The unique constraint makes spending it atomic: a second
    INSERT of the same (issuer, nonce) fails, however many launches race."""

    issuer = models.CharField(max_length=255)
    nonce = models.CharField(max_length=255)
    expires_at = models.DateTimeField(db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["issuer", "nonce"], name="lti_nonce_spent_once")
        ]

    def __str__(self) -> str:
        return f"{self.nonce} from {self.issuer}"


class Identity(models.Model):
    """A platform user (issuer + subject) and the local account they sign in as.

    Never matched by e-mail: a platform may let users change it, and two platforms may both
    claim the same address.
    """

    issuer = models.CharField(max_length=255)
    subject = models.CharField(max_length=255)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="lti_identities"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_launch_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "identities"
        constraints = [
            models.UniqueConstraint(fields=["issuer", "subject"], name="lti_identity_unique")
        ]

    def __str__(self) -> str:
        return f"{self.subject} at {self.issuer} = {self.user}"


class CourseLink(models.Model):
    """A platform course (an LTI context) and the local course it opens."""

    context = models.OneToOneField(LtiContext, on_delete=models.CASCADE, related_name="course_link")
    course = models.ForeignKey(Course, on_delete=models.CASCADE, related_name="lti_links")
    created_at = models.DateTimeField(auto_now_add=True)
    roster_synced_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "Moodle course"
        ordering = ["course", "pk"]

    def __str__(self) -> str:
        return f"{self.context} -> {self.course}"

    @property
    def registration(self) -> LtiRegistration:
        return self.context.deployment.registration

    def can_sync_roster(self) -> bool:
        return bool(self.context.memberships_url)


class Grading(models.Model):
    """How a course's mastery becomes a grade in the platform's gradebook."""

    class Mode(models.TextChoices):
        COURSE = "course", "Course mastery (mean p(L) over the skills) in every column"
        SKILL = "skill", "Per skill: an activity focused on a skill gets that skill's p(L)"

    course = models.OneToOneField(Course, on_delete=models.CASCADE, related_name="lti_grading")
    mode = models.CharField(max_length=10, choices=Mode.choices, default=Mode.COURSE)

    class Meta:
        verbose_name = "grade passback setting"

    def __str__(self) -> str:
        return f"{self.course}: {self.get_mode_display()}"


class GradeColumn(models.Model):
    """A platform gradebook column (an AGS line item) that scores are posted to."""

    context = models.ForeignKey(LtiContext, on_delete=models.CASCADE, related_name="+")
    resource_link = models.ForeignKey(
        LtiResourceLink, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    url = models.URLField(max_length=500, unique=True)
    scopes = models.JSONField(default=list)
    # The skill the activity focuses on (its `skill=` parameter), if any.
    skill = models.ForeignKey(
        Skill, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    def __str__(self) -> str:
        return self.url

    def can_post_scores(self) -> bool:
        return "https://purl.imsglobal.org/spec/lti-ags/scope/score" in self.scopes


class ScoreSync(models.Model):
    """One learner's score in one column: what was last posted, and the retry state.

    A row exists once the learner has launched the activity; the score is (re)posted when it
    changes, never twice for the same value.
    """

    column = models.ForeignKey(GradeColumn, on_delete=models.CASCADE, related_name="scores")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="lti_scores"
    )
    subject = models.CharField("user id on the platform", max_length=255)
    posted_score = models.FloatField(null=True, blank=True)
    posted_at = models.DateTimeField(null=True, blank=True)
    failures = models.IntegerField(default=0)
    retry_at = models.DateTimeField(null=True, blank=True, db_index=True)
    last_error = models.TextField(blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["column", "user"], name="lti_score_per_column")
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.column}: {self.posted_score}"
