"""django-q2 entry points: thin, they call the services."""

from __future__ import annotations

import logging
from typing import Any

from django_q.tasks import async_task

from lti import keys, services
from lti.models import CourseLink

logger = logging.getLogger(__name__)


def queue_score_posts(*, learner_id: int, course_id: int) -> None:
    async_task(
        "lti.tasks.post_scores",
        learner_id,
        course_id,
        task_name=f"lti-scores-{learner_id}-{course_id}",
        group="lti-scores",
    )


def post_scores(learner_id: int, course_id: int) -> dict[str, int]:
    return services.post_scores(learner_id=learner_id, course_id=course_id)


def retry_scores() -> int:
    """Every minute: post again the scores the platform refused earlier, once they are due."""
    return services.retry_due_scores()


def housekeeping() -> dict[str, Any]:
    """Hourly: forget expired nonces and retire signing keys past their grace period."""
    return {
        "nonces_purged": services.purge_spent_nonces(),
        "keys_retired": keys.retire_replaced_keys(),
    }


def sync_roster(link_id: int) -> dict[str, Any]:
    link = CourseLink.objects.select_related("context__deployment__registration").get(pk=link_id)
    return vars(services.sync_roster(link=link))
