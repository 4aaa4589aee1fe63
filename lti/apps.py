from __future__ import annotations

import logging
from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate

logger = logging.getLogger(__name__)


def _grant(sender: AppConfig, **kwargs: Any) -> None:
    from knowledge.services import grant_instructor_permissions
    from lti.services import INSTRUCTOR_PERMISSIONS

    grant_instructor_permissions("lti", INSTRUCTOR_PERMISSIONS)


def _mastery_changed(sender: Any, *, learner_id: int, course_id: int, **kwargs: Any) -> None:
    """Queue the grade passback of a learner whose mastery changed (sent on commit), when
    they have a gradebook column on a platform; others cost one query."""
    from lti import services, tasks

    try:
        if services.scores_of(learner_id=learner_id, course_id=course_id).exists():
            tasks.queue_score_posts(learner_id=learner_id, course_id=course_id)
    except Exception:
        # The attempt is committed: a queue that is down must not fail the learner's answer.
        logger.exception("could not queue the grade passback of learner %s", learner_id)


class LtiConfig(AppConfig):
    name = "lti"
    verbose_name = "Moodle (LTI 1.3)"

    def ready(self) -> None:
        from learners.signals import mastery_changed

        post_migrate.connect(_grant, sender=self)
        mastery_changed.connect(_mastery_changed, dispatch_uid="lti.grade_passback")
