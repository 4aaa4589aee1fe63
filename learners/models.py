"""How well each learner knows each skill: BKT parameters, attempts, mastery, items, policy."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models

from knowledge.models import Course, Skill
from learners.bkt import BKTParams

DEFAULT_PARAMS = BKTParams(p_l0=0.2, p_t=0.12, p_g=0.2, p_s=0.1, p_f=0.0)


class Mode(models.TextChoices):
    FOUNDATIONAL = "foundational", "Foundational"
    SCAFFOLDED = "scaffolded", "Scaffolded"
    ADVANCED = "advanced", "Advanced"


def mode_for(p_known: float, course: Course) -> str:
    """The mode table of DESIGN.md, with the course's thresholds."""
    if p_known < course.foundational_below:
        return Mode.FOUNDATIONAL
    if p_known < course.advanced_from:
        return Mode.SCAFFOLDED
    return Mode.ADVANCED


class SkillParameters(models.Model):
    """A skill's BKT parameters: set by the instructor, else fitted from attempts, else defaults."""

    class Source(models.TextChoices):
        INSTRUCTOR = "instructor", "Set by the instructor"
        FITTED = "fitted", "Fitted from attempts"
        DEFAULT = "default", "Defaults"

    skill = models.OneToOneField(Skill, on_delete=models.CASCADE, related_name="bkt")
    # The instructor's values, all five or none.
    set_l0 = models.FloatField("prior p(L0)", null=True, blank=True)
    set_t = models.FloatField("learn p(T)", null=True, blank=True)
    set_g = models.FloatField("guess p(G)", null=True, blank=True)
    set_s = models.FloatField("slip p(S)", null=True, blank=True)
    set_f = models.FloatField("forget p(F)", null=True, blank=True)
    fit_l0 = models.FloatField(null=True, blank=True, editable=False)
    fit_t = models.FloatField(null=True, blank=True, editable=False)
    fit_g = models.FloatField(null=True, blank=True, editable=False)
    fit_s = models.FloatField(null=True, blank=True, editable=False)
    fit_f = models.FloatField(null=True, blank=True, editable=False)
    fitted_at = models.DateTimeField(null=True, blank=True, editable=False)
    fit_attempts = models.IntegerField(default=0, editable=False)
    fit_learners = models.IntegerField(default=0, editable=False)
    fit_log_likelihood = models.FloatField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name = "BKT parameters"
        verbose_name_plural = "BKT parameters"

    def __str__(self) -> str:
        return f"BKT parameters of {self.skill}"

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        values = (self.set_l0, self.set_t, self.set_g, self.set_s)
        if all(value is None for value in values) and self.set_f is None:
            return
        if any(value is None for value in values):
            raise ValidationError("set all of prior, learn, guess and slip, or none of them")
        try:
            self.instructor_params()
        except ValueError as exc:
            raise ValidationError(str(exc)) from exc

    def instructor_params(self) -> BKTParams | None:
        values = (self.set_l0, self.set_t, self.set_g, self.set_s)
        if any(value is None for value in values):
            return None
        l0, t, g, s = (float(value) for value in values if value is not None)
        return BKTParams(p_l0=l0, p_t=t, p_g=g, p_s=s, p_f=self.set_f or 0.0)

    def fitted_params(self) -> BKTParams | None:
        values = (self.fit_l0, self.fit_t, self.fit_g, self.fit_s)
        if self.fitted_at is None or any(value is None for value in values):
            return None
        l0, t, g, s = (float(value) for value in values if value is not None)
        return BKTParams(p_l0=l0, p_t=t, p_g=g, p_s=s, p_f=self.fit_f or 0.0)

    def in_force(self) -> tuple[BKTParams, str]:
        """The parameters the live system uses, and where they come from."""
        chosen = self.instructor_params()
        if chosen is not None:
            return chosen, self.Source.INSTRUCTOR
        chosen = self.fitted_params()
        if chosen is not None:
            return chosen, self.Source.FITTED
        return DEFAULT_PARAMS, self.Source.DEFAULT


def params_for(skill: Skill) -> tuple[BKTParams, str]:
    try:
        return skill.bkt.in_force()
    except SkillParameters.DoesNotExist:
        return DEFAULT_PARAMS, SkillParameters.Source.DEFAULT


class Item(models.Model):
    class Kind(models.TextChoices):
        MULTIPLE_CHOICE = "mc", "Multiple choice"
        SHORT_ANSWER = "short", "Short answer"

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        APPROVED = "approved", "Approved"

    class Source(models.TextChoices):
        INSTRUCTOR = "instructor", "Instructor"
        GENERATED = "generated", "Generated from the material"
        IMPORT = "import", "Imported"

    course = models.ForeignKey(Course, on_delete=models.CASCADE, related_name="items")
    skill = models.ForeignKey(Skill, on_delete=models.CASCADE, related_name="items")
    stem = models.TextField()
    choices = models.JSONField(default=list, blank=True)
    answer = models.TextField()
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.MULTIPLE_CHOICE)
    irt_a = models.FloatField("IRT a (discrimination)", default=1.0)
    irt_b = models.FloatField("IRT b (difficulty)", default=0.0)
    irt_c = models.FloatField("IRT c (guessing)", default=0.0)
    calibrated_at = models.DateTimeField(null=True, blank=True, editable=False)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT)
    source = models.CharField(max_length=12, choices=Source.choices, default=Source.INSTRUCTOR)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["course", "skill", "id"]

    def __str__(self) -> str:
        return self.stem[:80]

    def clean(self) -> None:
        from django.core.exceptions import ValidationError

        errors: dict[str, str] = {}
        if (
            self.skill_id is not None
            and self.course_id is not None
            and self.skill.course_id != self.course_id
        ):
            errors["skill"] = "the skill belongs to another course"
        if self.kind == self.Kind.MULTIPLE_CHOICE:
            if not isinstance(self.choices, list) or len(self.choices) < 2:
                errors["choices"] = "a multiple-choice item needs at least two choices"
            elif not any(self._same(choice, self.answer) for choice in self.choices):
                errors["answer"] = "the answer must be one of the choices"
        if not 0.05 <= self.irt_a <= 5:
            errors["irt_a"] = "a must be between 0.05 and 5"
        if not -6 <= self.irt_b <= 6:
            errors["irt_b"] = "b must be between -6 and 6"
        if not 0 <= self.irt_c < 0.5:
            errors["irt_c"] = "c must be at least 0 and below 0.5"
        if errors:
            raise ValidationError(errors)

    @staticmethod
    def _same(left: object, right: str) -> bool:
        return " ".join(str(left).split()).casefold() == " ".join(right.split()).casefold()

    def is_correct(self, response: str) -> bool:
        """Exact grading, for multiple choice: the chosen text equals the answer."""
        return self._same(response, self.answer)


class Attempt(models.Model):
    """One graded response. Append-only: never changed once written."""

    class Source(models.TextChoices):
        QUIZ = "quiz", "Quiz"
        CHAT = "chat", "Chat"
        LTI = "lti", "LTI"
        API = "api", "API"
        IMPORT = "import", "Import"

    learner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="attempts"
    )
    skill = models.ForeignKey(Skill, on_delete=models.CASCADE, related_name="attempts")
    item = models.ForeignKey(
        Item, null=True, blank=True, on_delete=models.SET_NULL, related_name="attempts"
    )
    correct = models.BooleanField()
    source = models.CharField(max_length=10, choices=Source.choices)
    key = models.CharField("idempotency key", max_length=200)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    p_before = models.FloatField()
    p_after = models.FloatField()

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["learner", "key"], name="attempt_unique_key")
        ]
        indexes = [models.Index(fields=["skill", "learner", "id"], name="attempt_sequence")]

    def __str__(self) -> str:
        return f"{self.learner} {'right' if self.correct else 'wrong'} on {self.skill}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None and not self._state.adding:
            raise ValueError("attempts are append-only")
        super().save(*args, **kwargs)


class Mastery(models.Model):
    learner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="masteries"
    )
    skill = models.ForeignKey(Skill, on_delete=models.CASCADE, related_name="masteries")
    p_known = models.FloatField()
    # The same belief as log-odds, which BKT updates: p(L) itself rounds to exactly 1.0 after a
    # long run of right answers, and then no wrong answer could ever lower it again.
    log_odds = models.FloatField(default=0.0)
    attempts = models.IntegerField(default=0)
    correct = models.IntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "masteries"
        ordering = ["learner", "skill"]
        constraints = [
            models.UniqueConstraint(
                fields=["learner", "skill"], name="mastery_unique_learner_skill"
            )
        ]

    def __str__(self) -> str:
        return f"{self.learner} on {self.skill}: {self.p_known:.2f}"

    def mode(self) -> str:
        return mode_for(self.p_known, self.skill.course)


class PolicySnapshot(models.Model):
    """The next-item policy of a course, trained from its logged attempts."""

    course = models.ForeignKey(Course, on_delete=models.CASCADE, related_name="policies")
    table = models.JSONField()
    transitions = models.IntegerField(default=0)
    trained_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-trained_at"]
        get_latest_by = "trained_at"

    def __str__(self) -> str:
        return f"policy of {self.course} ({self.trained_at:%Y-%m-%d %H:%M})"


class SkillBKT(Skill):
    """A skill seen from the learner model: its BKT parameters in the back office."""

    class Meta:
        proxy = True
        verbose_name = "skill's BKT parameters"
        verbose_name_plural = "BKT parameters by skill"
