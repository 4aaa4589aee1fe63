"""What `learners` announces. Other apps listen (lti queues grade passback), so learners never
imports them."""

from __future__ import annotations

from django.dispatch import Signal

#: Sent on commit after a learner's mastery of a skill changed.
#: Arguments: learner_id, skill_id, course_id, p_known, mode.
mastery_changed = Signal()
