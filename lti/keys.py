"""The tool's signing keys: published at /lti/jwks/, rotated by `manage.py rotate_lti_keys`.

The newest active key signs (django-lti's `LtiRegistration.to_registration`); every active
key is published. A replaced key stays published for TUTOR_LTI_KEY_GRACE_DAYS after its
successor was made, so a platform that cached our key set still verifies what we signed, and
is then retired (inactive: never published, never used again).
"""

from __future__ import annotations

import itertools
import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from lti_tool.models import Key

logger = logging.getLogger(__name__)


def ensure_signing_key() -> Key:
    """The key that signs now; the first one is made on first use."""
    key = Key.objects.active().order_by("-datetime_created", "-pk").first()
    if key is None:
        key = Key.objects.generate()
        logger.info("made the tool's first signing key %s", key)
    return key


def retire_replaced_keys(*, grace: timedelta | None = None, now: datetime | None = None) -> int:
    """Deactivate every active key whose successor is older than the grace period."""
    grace = grace if grace is not None else timedelta(days=settings.TUTOR_LTI_KEY_GRACE_DAYS)
    now = now or timezone.now()
    retired = 0
    with transaction.atomic():
        keys = list(Key.objects.active().select_for_update().order_by("datetime_created", "pk"))
        for key, successor in itertools.pairwise(keys):
            if successor.datetime_created <= now - grace:
                key.is_active = False
                key.save(update_fields=["is_active", "datetime_modified"])
                logger.info("retired signing key %s (replaced %s)", key, successor.datetime_created)
                retired += 1
    return retired


def rotate_keys(*, grace: timedelta | None = None) -> tuple[Key, int]:
    """Make a new signing key (used at once) and retire keys replaced more than `grace` ago.

    The key replaced now stays published for the grace period, so platforms that cached the
    old key set keep verifying our tokens until they refetch it.
    """
    with transaction.atomic():
        new = Key.objects.generate()
        retired = retire_replaced_keys(grace=grace)
    logger.info("rotated the signing key: %s signs now, %d retired", new, retired)
    return new, retired
