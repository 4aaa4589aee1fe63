"""Writes of the LTI app: admitting a launch, rosters (NRPS) and grade passback (AGS).

Views, commands, the admin and tasks call these; see `lti.launch` for how a launch flows.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.text import slugify
from lti_tool.models import LtiContext, LtiLaunch, LtiMembership, LtiUser
from lti_tool.utils import sync_data_from_launch

from knowledge import services as knowledge_services
from knowledge.models import Course, Enrollment, Skill
from learners.models import Mastery, params_for
from learners.services import mastery_of
from lti import platform
from lti.launch import CLAIM, LaunchRefused, StrictLaunch
from lti.models import CourseLink, GradeColumn, Grading, Identity, ScoreSync, UsedNonce

if TYPE_CHECKING:
    from tutoring.models import Conversation

logger = logging.getLogger(__name__)

AGS_CLAIM = "https://purl.imsglobal.org/spec/lti-ags/claim/endpoint"
LIS = "http://purl.imsglobal.org/vocab/lis/v2/membership"

#: Permissions of the lti app that course instructors get in the back office.
INSTRUCTOR_PERMISSIONS = {"courselink": ["view"], "grading": ["view", "add", "change"]}


# --- Roles ---------------------------------------------------------------------------------------


def role_from_lti(roles: list[str]) -> str | None:
    """The Enrollment role for LTI context roles: Instructor and TeachingAssistant (and their
    sub-roles) teach, Learner learns; anything else (Mentor, institution or system roles
    alone) has no place in the course."""
    teaches = learns = False
    for role in roles:
        if re.fullmatch(r"\w+", role):  # a short name, as LTI allows for context roles
            role = f"{LIS}#{role}"
        vocabulary, _, name = role.partition("#")
        if vocabulary == LIS:
            teaches |= name in ("Instructor", "TeachingAssistant")
            learns |= name == "Learner"
        elif vocabulary == f"{LIS}/Instructor":
            teaches = True
        elif vocabulary == f"{LIS}/Learner":
            learns = True
    if teaches:
        return Enrollment.Role.INSTRUCTOR
    if learns:
        return Enrollment.Role.LEARNER
    return None


# --- Launch --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Admission:
    """Who a validated launch is, where, and what it asks for."""

    user: User
    course: Course
    role: str
    focus_skill: Skill | None
    is_deep_linking: bool
    launch_id: str
    notes: list[str] = field(default_factory=list)

    @property
    def teaches(self) -> bool:
        return self.role == Enrollment.Role.INSTRUCTOR


@transaction.atomic
def admit(*, launch: StrictLaunch) -> Admission:
    """Spend the launch's nonce and bring the app in line with what it says: the local user
    (by issuer + subject), the course (linked, or made on the first instructor launch), the
    enrollment and the grade column. Refused (LaunchRefused), everything is rolled back."""
    launch.spend_nonce()
    launch.save_launch_data()
    claims = launch.claims
    role = role_from_lti(list(claims.get(CLAIM + "roles") or []))
    if role is None:
        raise LaunchRefused("your role in this course gives no access to the tutor")
    context_claim = claims.get(CLAIM + "context") or {}
    if not context_claim.get("id"):
        raise LaunchRefused("the launch names no course (context)")
    is_deep_linking = claims.get(CLAIM + "message_type") == "LtiDeepLinkingRequest"
    if is_deep_linking and role != Enrollment.Role.INSTRUCTOR:
        raise LaunchRefused("only instructors may add the tutor to a course")

    lti_launch = LtiLaunch(launch)
    sync_data_from_launch(lti_launch, None)
    # Launches of the same platform course queue here, so two first launches make one course.
    context = LtiContext.objects.select_for_update().get(pk=lti_launch.context.pk)
    user = local_user(issuer=claims["iss"], subject=claims["sub"], profile=claims)
    LtiUser.objects.filter(pk=lti_launch.user.pk).update(auth_user=user)
    custom = claims.get(CLAIM + "custom") or {}
    course = _course_for(context=context, role=role, requested=_text(custom, "course"))
    _enroll(course=course, user=user, role=role)

    notes: list[str] = []
    focus = None
    skill_name = _text(custom, "skill")
    if skill_name:
        focus = find_skill(course, skill_name)
        if focus is None:
            notes.append(
                f"This activity asks for the skill {skill_name!r}, which the course lacks."
            )
            logger.warning("launch into %s names unknown skill %r", course.slug, skill_name)
    if not is_deep_linking:
        _track_grades(lti_launch, claims=claims, user=user, role=role, focus=focus)
    logger.info(
        "LTI launch: %s (%s at %s) into %s as %s%s",
        user.username,
        claims["sub"],
        claims["iss"],
        course.slug,
        role,
        " (deep linking)" if is_deep_linking else "",
    )
    return Admission(user, course, role, focus, is_deep_linking, launch.get_launch_id(), notes)


def _text(custom: Any, name: str) -> str:
    """A custom parameter, unless the platform left a substitution variable unresolved."""
    value = str(custom.get(name) or "").strip() if isinstance(custom, dict) else ""
    return "" if value.startswith("$") else value


def find_skill(course: Course, name: str) -> Skill | None:
    skills = Skill.objects.filter(course=course)
    return skills.filter(name=name).first() or skills.filter(name__iexact=name).first()


def _username(issuer: str, subject: str, profile: dict[str, Any]) -> str:
    digest = hashlib.sha256(f"{issuer}\n{subject}".encode()).hexdigest()[:10]
    base = slugify(str(profile.get("name") or profile.get("given_name") or "user"))[:40]
    return f"{base or 'user'}-{digest}"


def local_user(*, issuer: str, subject: str, profile: dict[str, Any]) -> User:
    """The local account of a platform user, made on first sight. The name and e-mail are
    copied from the platform for display only; the account is found by issuer + subject."""
    given, family = str(profile.get("given_name") or ""), str(profile.get("family_name") or "")
    if not (given or family):  # some platforms send only the full name
        given, _, family = str(profile.get("name") or "").strip().partition(" ")
    names = {
        "first_name": given[:150],
        "last_name": family[:150],
        "email": str(profile.get("email") or "")[:254],
    }
    identity = (
        Identity.objects.select_related("user").filter(issuer=issuer, subject=subject).first()
    )
    if identity is None:
        try:
            with transaction.atomic():
                user = User(username=_username(issuer, subject, profile), **names)
                user.set_unusable_password()  # signs in through the platform only
                user.save()
                identity = Identity.objects.create(issuer=issuer, subject=subject, user=user)
        except IntegrityError:
            # race: the same person's first launch in another tab won.
            identity = Identity.objects.select_related("user").get(issuer=issuer, subject=subject)
    user = identity.user
    changed = [name for name, value in names.items() if value and getattr(user, name) != value]
    for name in changed:
        setattr(user, name, names[name])
    if changed:
        user.save(update_fields=changed)
    Identity.objects.filter(pk=identity.pk).update(last_launch_at=timezone.now())
    return user


def _unique_slug(text: str) -> str:
    base = slugify(text)[:60].strip("-") or "moodle-course"
    slug, n = base, 1
    while Course.objects.filter(slug=slug).exists():
        n += 1
        slug = f"{base}-{n}"
    return slug


def _course_for(*, context: LtiContext, role: str, requested: str) -> Course:
    link = CourseLink.objects.select_related("course").filter(context=context).first()
    if link is not None:
        if requested and requested != link.course.slug:
            logger.warning(
                "context %s asks for course %r but is linked to %s; the link stays",
                context.pk,
                requested,
                link.course.slug,
            )
        return link.course
    if role != Enrollment.Role.INSTRUCTOR:
        raise LaunchRefused(
            "this course is not set up in the tutor yet: your instructor has to open it from "
            "Moodle once"
        )
    issuer = context.deployment.registration.issuer
    if requested:
        course = Course.objects.filter(slug=requested).first()
        if course is None:
            raise LaunchRefused(f"the tool's 'course' parameter names no course ({requested!r})")
        # First claim wins: a course another platform opens can't be taken over from here.
        if (
            CourseLink.objects.filter(course=course)
            .exclude(context__deployment__registration__issuer=issuer)
            .exists()
        ):
            raise LaunchRefused(f"course {requested!r} is already linked to another platform")
    else:
        title = context.title or context.label or f"Moodle course {context.id_on_platform}"
        course = knowledge_services.create_course(
            slug=_unique_slug(context.label or title), title=title[:200]
        )
        logger.info("made course %s for context %s of %s", course.slug, context.pk, issuer)
    CourseLink.objects.create(context=context, course=course)
    return course


def _enroll(*, course: Course, user: User, role: str) -> None:
    knowledge_services.enroll(course=course, user=user, role=role)
    if role == Enrollment.Role.INSTRUCTOR:
        knowledge_services.make_instructor_staff(user=user)
        knowledge_services.grant_instructor_permissions("lti", INSTRUCTOR_PERMISSIONS)


def _track_grades(
    lti_launch: LtiLaunch, *, claims: dict[str, Any], user: User, role: str, focus: Skill | None
) -> None:
    """Remember the activity's gradebook column, and that this learner has a score there."""
    endpoint = claims.get(AGS_CLAIM) or {}
    url = str(endpoint.get("lineitem") or "")
    if not url:
        return
    column, _ = GradeColumn.objects.update_or_create(
        url=url,
        defaults={
            "context": lti_launch.context,
            "resource_link": lti_launch.resource_link,
            "scopes": list(endpoint.get("scope") or []),
            "skill": focus,
        },
    )
    if role == Enrollment.Role.LEARNER:
        ScoreSync.objects.update_or_create(
            column=column, user=user, defaults={"subject": claims["sub"]}
        )


def open_chat(*, user: User, course: Course, focus: Skill | None) -> Conversation:
    """The learner's latest conversation in the course on that focus, or a new one."""
    from tutoring import services as tutoring_services
    from tutoring.models import Conversation

    latest = (
        Conversation.objects.filter(learner=user, course=course, focus_skill=focus)
        .order_by("-updated_at", "-pk")
        .first()
    )
    if latest is not None:
        return latest
    return tutoring_services.start_conversation(learner=user, course=course, focus_skill=focus)


def purge_spent_nonces(*, now: datetime | None = None) -> int:
    """Forget nonces whose token has expired anyway (its exp refuses it from then on)."""
    deleted, _ = UsedNonce.objects.filter(expires_at__lt=now or timezone.now()).delete()
    return deleted


# --- Roster (NRPS) -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RosterResult:
    course: str
    members: int
    added: int
    changed: int
    removed: int


def sync_roster(*, link: CourseLink) -> RosterResult:
    """Bring the course's enrollments in line with the platform course's members.

    Members are found (or made) by issuer + subject and enrolled with their role. Accounts of
    this platform enrolled in the course but no longer active members here (nor in another
    platform course linked to it) lose their enrollment. Local accounts are never touched.
    """
    context = link.context
    registration = context.deployment.registration
    if not context.memberships_url:
        raise platform.PlatformError(
            f"{context} has no roster service: turn on 'IMS LTI Names and Role Provisioning' "
            "for the tool in Moodle, then launch it once"
        )
    members = platform.fetch_members(
        registration=registration, memberships_url=context.memberships_url
    )
    for member in members:
        member.setdefault("status", "Active")
        member.setdefault("roles", [])
    issuer = registration.issuer
    added = changed = 0
    with transaction.atomic():
        course = Course.objects.select_for_update().get(pk=link.course_id)
        listed = [m for m in members if m.get("user_id")]
        context.update_memberships(listed)
        LtiMembership.objects.filter(context=context).exclude(
            user__sub__in=[m["user_id"] for m in listed]
        ).update(is_active=False)
        present: set[int] = set()
        for member in members:
            role = role_from_lti(list(member["roles"]))
            if not member.get("user_id") or member["status"] != "Active" or role is None:
                continue
            user = local_user(issuer=issuer, subject=str(member["user_id"]), profile=member)
            LtiUser.objects.filter(registration=registration, sub=member["user_id"]).update(
                auth_user=user
            )
            before = course.role_of(user)
            if before != role:
                _enroll(course=course, user=user, role=role)
                added += before is None
                changed += before is not None
            present.add(user.pk)
        elsewhere = LtiMembership.objects.filter(
            context__course_link__course=course, is_active=True, user__auth_user__isnull=False
        ).exclude(context=context)
        removed = (
            Enrollment.objects.filter(course=course, user__lti_identities__issuer=issuer)
            .exclude(user__in=present)
            .exclude(user__in=elsewhere.values("user__auth_user"))
        )
        gone = list(removed.values_list("user__username", flat=True))
        removed.delete()
        CourseLink.objects.filter(pk=link.pk).update(roster_synced_at=timezone.now())
    logger.info(
        "roster of %s from %s: %d members, %d added, %d changed, %d removed %s",
        course.slug,
        context,
        len(members),
        added,
        changed,
        len(gone),
        gone,
    )
    return RosterResult(course.slug, len(members), added, changed, len(gone))


# --- Grades (AGS) --------------------------------------------------------------------------------


def grading_mode(course: Course) -> str:
    row = Grading.objects.filter(course=course).only("mode").first()
    return row.mode if row is not None else Grading.Mode.COURSE


def course_mastery(*, learner: User, course: Course) -> float | None:
    """Mean p(L) over the course's skills (the prior where the learner has not practised)."""
    skills = list(Skill.objects.filter(course=course))
    if not skills:
        return None
    known = dict(
        Mastery.objects.filter(learner=learner, skill__course=course).values_list(
            "skill_id", "p_known"
        )
    )
    values = [known[s.pk] if s.pk in known else params_for(s)[0].p_l0 for s in skills]
    return sum(values) / len(values)


def score_for(*, column: GradeColumn, learner: User, course: Course) -> float | None:
    """The score (0-100, two decimals) this column shows for the learner, by the course's
    grading mode."""
    p_known: float | None
    if column.skill is not None and grading_mode(course) == Grading.Mode.SKILL:
        p_known = mastery_of(learner, column.skill)
    else:
        p_known = course_mastery(learner=learner, course=course)
    if p_known is None:
        return None
    return round(p_known * platform.SCORE_MAXIMUM, 2)


def scores_of(*, learner_id: int, course_id: int) -> QuerySet[ScoreSync]:
    return ScoreSync.objects.filter(
        user_id=learner_id, column__context__course_link__course_id=course_id
    )


def _retry_delay(failures: int) -> timedelta:
    return timedelta(seconds=min(30 * 2 ** (failures - 1), 3600))


def post_score(*, score_id: int) -> str:
    """Post one learner's current score to one column unless the platform has it already.

    The row stays locked while the platform is called, so two workers never post the same
    value twice. A failure is recorded and retried later (`retry_due_scores`) with growing
    delays. Returns what happened: posted, unchanged, failed, no-score or gone.
    """
    with transaction.atomic():
        row = (
            ScoreSync.objects.select_for_update(of=("self",))
            .select_related("column__skill", "column__context__deployment__registration", "user")
            .filter(pk=score_id)
            .first()
        )
        if row is None:
            return "gone"
        link = (
            CourseLink.objects.select_related("course").filter(context=row.column.context).first()
        )
        if link is None:
            return "gone"
        value = score_for(column=row.column, learner=row.user, course=link.course)
        if value is None:
            return "no-score"
        if row.posted_score is not None and abs(row.posted_score - value) < 0.005:
            if row.retry_at is not None:
                row.retry_at, row.failures, row.last_error = None, 0, ""
                row.save(update_fields=["retry_at", "failures", "last_error"])
            return "unchanged"
        try:
            platform.post_score(
                registration=row.column.context.deployment.registration,
                lineitem_url=row.column.url,
                scopes=list(row.column.scopes),
                subject=row.subject,
                score=value,
            )
        except platform.PlatformError as exc:
            row.failures += 1
            row.last_error = str(exc)[:2000]
            gives_up = row.failures >= settings.TUTOR_LTI_SCORE_MAX_FAILURES
            row.retry_at = None if gives_up else timezone.now() + _retry_delay(row.failures)
            row.save(update_fields=["failures", "last_error", "retry_at"])
            log = logger.error if gives_up else logger.warning
            log(
                "score %.2f for %s in %s failed (%d times%s): %s",
                value,
                row.user.username,
                row.column.url,
                row.failures,
                ", giving up until it changes" if gives_up else "",
                exc,
            )
            return "failed"
        row.posted_score, row.posted_at = value, timezone.now()
        row.failures, row.retry_at, row.last_error = 0, None, ""
        row.save(update_fields=["posted_score", "posted_at", "failures", "retry_at", "last_error"])
    logger.info("posted score %.2f for %s to %s", value, row.user.username, row.column.url)
    return "posted"


def post_scores(*, learner_id: int, course_id: int) -> dict[str, int]:
    """Post every changed score of a learner in a course (all their columns)."""
    outcomes: dict[str, int] = {}
    for score_id in scores_of(learner_id=learner_id, course_id=course_id).values_list(
        "pk", flat=True
    ):
        outcome = post_score(score_id=score_id)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes


def retry_due_scores(*, now: datetime | None = None) -> int:
    """Post again every score whose retry time has come; returns how many were tried."""
    due = ScoreSync.objects.filter(retry_at__lte=now or timezone.now()).values_list("pk", flat=True)
    ids = list(due[:500])
    for score_id in ids:
        post_score(score_id=score_id)
    return len(ids)
