"""The task queue's own upkeep (django-q2 on the database broker)."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

logger = logging.getLogger(__name__)

# Clocks of the hosts that share the broker may differ by this much.
CLOCK_SKEW = timedelta(seconds=5)


def release_orphans() -> int:
    """Hand back the messages leased by clusters that are gone, and say how many.

    A cluster leases the messages it takes for `retry` seconds (half an hour here), and takes up
    to `queue_limit` ahead of its workers. When it is killed (Ctrl-C on `make run` while the
    demo course is ingested, a crashed host), the broker would keep those messages from every
    other cluster until their lease runs out. A lease taken before the oldest running cluster
    started can only belong to one that is gone: those are released at once. Nothing is done
    where no running cluster is known (its lease may be live) or with Redis as the broker."""
    if settings.REDIS_URL:
        return 0
    from django_q.models import OrmQ
    from django_q.status import Stat

    births = [stat.tob for stat in Stat.get_all() if stat.tob is not None]
    if not births:
        return 0
    now = timezone.now()
    retry = timedelta(seconds=settings.Q_CLUSTER["retry"])
    # lock = when the lease ends = when it was taken + retry.
    orphans = OrmQ.objects.filter(lock__gt=now, lock__lt=min(births) + retry - CLOCK_SKEW)
    released = orphans.update(lock=now - timedelta(seconds=1))
    if released:
        logger.warning("released %d queued task(s) leased by a cluster that is gone", released)
    return released
