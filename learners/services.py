"""Writes to the learner model. Views, the API, commands and the chat call these."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from django.db import transaction
from django.utils import timezone

from knowledge.models import Course, Skill
from learners import bkt
from learners.models import Attempt, Item, Mastery, SkillParameters, mode_for, params_for
from learners.signals import mastery_changed

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from learners.policy import QPolicy

logger = logging.getLogger(__name__)


class LearnerError(Exception):
    """A request the learner model refuses; `status` is the HTTP status that fits."""

    status = 400

    def __init__(self, message: str, *, field: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if status is not None:
            self.status = status


@dataclass(frozen=True)
class AttemptResult:
    attempt: Attempt
    p_known: float
    mode: str
    attempts: int
    created: bool  # False when the key had been seen: the first result is returned


def _check_attempt(learner: User, skill: Skill, item: Item | None, source: str, key: str) -> None:
    if not key or len(key) > 200:
        raise LearnerError("key must be 1-200 characters", field="key")
    if source not in Attempt.Source.values:
        raise LearnerError(
            f"unknown source {source!r}; use one of {', '.join(Attempt.Source.values)}",
            field="source",
        )
    if item is not None and item.skill_id != skill.pk:
        raise LearnerError("the item belongs to another skill", field="item")


def record_attempt(
    *,
    learner: User,
    skill: Skill,
    correct: bool,
    source: str,
    key: str,
    item: Item | None = None,
) -> AttemptResult:
    """Append a graded response and update mastery by BKT, atomically.

    A repeated key returns the first result and changes nothing. Concurrent attempts for the
    same learner and skill queue on the mastery row's lock, so none is lost or applied twice.
    """
    _check_attempt(learner, skill, item, source, key)
    params, _ = params_for(skill)
    with transaction.atomic():
        # Make sure the row exists, then lock it: every attempt of this learner on this skill
        # passes through this lock one at a time.
        Mastery.objects.bulk_create(
            [
                Mastery(
                    learner=learner,
                    skill=skill,
                    p_known=params.p_l0,
                    log_odds=bkt.to_logit(params.p_l0),
                )
            ],
            ignore_conflicts=True,
        )
        mastery = Mastery.objects.select_for_update().get(learner=learner, skill=skill)
        log_odds = bkt.update_logit(mastery.log_odds, bool(correct), params)
        p_before, p_after = mastery.p_known, bkt.from_logit(log_odds)
        attempt = Attempt(
            learner=learner,
            skill=skill,
            item=item,
            correct=bool(correct),
            source=source,
            key=key,
            p_before=p_before,
            p_after=p_after,
        )
        # Under the mastery lock, a twin with the same key for this skill has committed; one
        # for another skill may still be in flight, and then the unique index makes us wait.
        if not _insert_new(attempt):
            return _repeat(Attempt.objects.get(learner=learner, key=key), skill)
        mastery.p_known, mastery.log_odds = p_after, log_odds
        mastery.attempts += 1
        mastery.correct += int(bool(correct))
        mastery.save(update_fields=["p_known", "log_odds", "attempts", "correct", "updated_at"])
        mode = mode_for(p_after, skill.course)
        transaction.on_commit(
            lambda: mastery_changed.send(
                sender=Mastery,
                learner_id=learner.pk,
                skill_id=skill.pk,
                course_id=skill.course_id,
                p_known=p_after,
                mode=mode,
            )
        )
    return AttemptResult(attempt, p_after, mode, mastery.attempts, created=True)


_INSERT_ATTEMPT = (
    "INSERT INTO learners_attempt "
    "(learner_id, skill_id, item_id, correct, source, key, created_at, p_before, p_after) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (learner_id, key) DO NOTHING RETURNING id, created_at"
)


def _insert_new(attempt: Attempt) -> bool:
    """Insert unless the learner's key exists (one round trip); False for a repeated key."""
    from django.db import connection

    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            _INSERT_ATTEMPT,
            [
                attempt.learner_id,
                attempt.skill_id,
                attempt.item_id,
                attempt.correct,
                attempt.source,
                attempt.key,
                now,
                attempt.p_before,
                attempt.p_after,
            ],
        )
        row = cursor.fetchone()
    if row is None:
        return False
    attempt.pk, attempt.created_at = row
    attempt._state.adding = False
    attempt._state.db = "default"
    return True


def _repeat(earlier: Attempt, skill: Skill) -> AttemptResult:
    if earlier.skill_id != skill.pk:
        raise LearnerError("this key was already used for another skill", field="key", status=409)
    count = Attempt.objects.filter(
        learner_id=earlier.learner_id, skill_id=earlier.skill_id, id__lte=earlier.pk
    ).count()
    return AttemptResult(
        earlier, earlier.p_after, mode_for(earlier.p_after, skill.course), count, created=False
    )


def mastery_of(learner: User, skill: Skill) -> float:
    """p(L) now: the stored mastery, or the prior when the learner has not answered yet."""
    row = Mastery.objects.filter(learner=learner, skill=skill).only("p_known").first()
    return row.p_known if row is not None else params_for(skill)[0].p_l0


def fit_course(*, course: Course, forgets: bool = False, restarts: int = 10) -> dict[str, int]:
    """Fit each skill's BKT parameters from its attempts; returns responses used per skill."""
    started = time.perf_counter()
    sequences: dict[int, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    rows = (
        Attempt.objects.filter(skill__course=course)
        .order_by("skill_id", "learner_id", "created_at", "id")
        .values_list("skill_id", "learner_id", "correct")
        .iterator(chunk_size=20000)
    )
    for skill_id, learner_id, correct in rows:
        sequences[skill_id][learner_id].append(int(correct))
    skills = {skill.pk: skill for skill in Skill.objects.filter(course=course)}
    data = {
        skill_id: [np.asarray(seq, dtype=np.int8) for seq in per_learner.values()]
        for skill_id, per_learner in sequences.items()
        if skill_id in skills
    }
    fits = bkt.fit_skills(data, forgets=forgets, restarts=restarts) if data else {}
    now = timezone.now()
    used: dict[str, int] = {}
    with transaction.atomic():
        for skill_id, fitted in fits.items():
            params = fitted.params
            SkillParameters.objects.update_or_create(
                skill=skills[skill_id],
                defaults={
                    "fit_l0": params.p_l0,
                    "fit_t": params.p_t,
                    "fit_g": params.p_g,
                    "fit_s": params.p_s,
                    "fit_f": params.p_f,
                    "fitted_at": now,
                    "fit_attempts": fitted.n_responses,
                    "fit_learners": fitted.n_sequences,
                    "fit_log_likelihood": fitted.log_likelihood,
                },
            )
            used[skills[skill_id].name] = fitted.n_responses
    logger.info(
        "fitted BKT for %d skills of %s in %.2fs",
        len(used),
        course.slug,
        time.perf_counter() - started,
    )
    return used


def ability_of(learner: User, skill: Skill) -> float | None:
    """EAP ability from the learner's answers to this skill's items, None with no such answer."""
    from learners import irt

    answered = list(
        Attempt.objects.filter(learner=learner, skill=skill, item__isnull=False)
        .select_related("item")
        .order_by("id")
    )
    if not answered:
        return None
    items = [
        irt.ItemParams(a=a.item.irt_a, b=a.item.irt_b, c=a.item.irt_c)
        for a in answered
        if a.item is not None
    ]
    return irt.eap(items, [attempt.correct for attempt in answered]).theta


def current_policy(course: Course) -> QPolicy:
    from learners.models import PolicySnapshot
    from learners.policy import QPolicy

    snapshot = PolicySnapshot.objects.filter(course=course).order_by("-trained_at").first()
    if snapshot is None:
        return QPolicy()
    try:
        return QPolicy.from_dict(snapshot.table)
    except ValueError:
        logger.exception(
            "policy %s of %s is unreadable; using the untrained fallback", snapshot.pk, course.slug
        )
        return QPolicy()


RECENT_ITEMS = 5


def next_item(*, learner: User, skill: Skill) -> Item | None:
    """The approved item of the skill to ask this learner next, or None when there is none.

    The course's Q-learning policy picks a difficulty band for the learner's mastery bucket;
    the most informative item at the learner's ability within it wins. Untrained, it is the
    most informative item overall. The last few items answered are not asked again.
    """
    from learners.policy import Candidate

    items = {
        item.pk: item for item in Item.objects.filter(skill=skill, status=Item.Status.APPROVED)
    }
    if not items:
        return None
    recent = list(
        Attempt.objects.filter(learner=learner, skill=skill, item__isnull=False)
        .order_by("-id")
        .values_list("item_id", flat=True)[:RECENT_ITEMS]
    )
    if len(set(recent) & set(items)) >= len(items):
        recent = recent[: max(0, len(items) - 1)]  # a small bank: only avoid repeating the last
    candidates = [
        Candidate(id=pk, a=item.irt_a, b=item.irt_b, c=item.irt_c) for pk, item in items.items()
    ]
    chosen = current_policy(skill.course).choose(
        mastery_of(learner, skill),
        candidates,
        theta=ability_of(learner, skill),
        recent=[pk for pk in recent if pk is not None],
    )
    return items[int(chosen.id)] if chosen is not None else None


def add_generated_item(*, skill: Skill, stem: str, choices: list[str], answer: str) -> Item:
    """A multiple-choice item made from the course material, stored as a draft for an
    instructor to approve (the same stem again returns the one already made)."""
    item, created = Item.objects.get_or_create(
        course=skill.course,
        skill=skill,
        stem=stem,
        defaults={
            "choices": choices,
            "answer": answer,
            "kind": Item.Kind.MULTIPLE_CHOICE,
            "status": Item.Status.DRAFT,
            "source": Item.Source.GENERATED,
        },
    )
    if created:
        item.full_clean()
        logger.info("generated draft item %s for skill %s", item.pk, skill.pk)
    return item


def calibrate_items(*, course: Course, min_responses: int = 200) -> int:
    """Re-estimate the 2PL parameters of the course's items from logged answers.

    Needs at least `min_responses` answers to items of the course; returns the items updated.
    """
    from learners import irt

    rows = list(
        Attempt.objects.filter(skill__course=course, item__isnull=False)
        .order_by("id")
        .values_list("learner_id", "item_id", "correct")
    )
    if len(rows) < min_responses:
        return 0
    people = {learner: index for index, learner in enumerate(sorted({row[0] for row in rows}))}
    item_ids = sorted({row[1] for row in rows})
    column = {item_id: index for index, item_id in enumerate(item_ids)}
    triples = [(people[learner], column[item], float(correct)) for learner, item, correct in rows]
    result = irt.calibrate(triples, model="2PL", n_persons=len(people), n_items=len(item_ids))
    now = timezone.now()
    with transaction.atomic():
        for item_id, params in zip(item_ids, result.items, strict=True):
            Item.objects.filter(pk=item_id).update(
                irt_a=params.a, irt_b=params.b, irt_c=params.c, calibrated_at=now
            )
    return len(item_ids)


def train_policy(*, course: Course) -> int:
    """Train the course's next-item policy from its logged answers to items; returns how many."""
    from learners.models import PolicySnapshot
    from learners.policy import QPolicy

    policy = QPolicy()
    episodes: dict[tuple[int, int], list[Any]] = defaultdict(list)
    attempts = (
        Attempt.objects.filter(skill__course=course, item__isnull=False)
        .order_by("learner_id", "skill_id", "id")
        .values_list("learner_id", "skill_id", "p_before", "p_after", "correct", "item__irt_b")
    )
    for learner_id, skill_id, p_before, p_after, correct, b in attempts.iterator(chunk_size=20000):
        episodes[(learner_id, skill_id)].append(
            policy.transition(p_before=p_before, p_after=p_after, b=b, correct=correct)
        )
    trained = policy.trained(list(episodes.values()))
    transitions = sum(len(episode) for episode in episodes.values())
    PolicySnapshot.objects.create(course=course, table=trained.to_dict(), transitions=transitions)
    return transitions
