"""Schedule the retries of refused grade posts (every minute) and the hourly housekeeping
(expired nonces, signing keys past their grace period)."""

from __future__ import annotations

from typing import Any

from django.db import migrations

SCHEDULES = {
    "lti: retry grade posts": ("lti.tasks.retry_scores", 1),
    "lti: housekeeping": ("lti.tasks.housekeeping", 60),
}


def forwards(apps: Any, schema_editor: Any) -> None:
    Schedule = apps.get_model("django_q", "Schedule")
    for name, (func, minutes) in SCHEDULES.items():
        Schedule.objects.update_or_create(
            name=name,
            defaults={"func": func, "schedule_type": "I", "minutes": minutes, "repeats": -1},
        )


def backwards(apps: Any, schema_editor: Any) -> None:
    apps.get_model("django_q", "Schedule").objects.filter(name__in=list(SCHEDULES)).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("lti", "0001_initial"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
