"""Schedule the nightly refit of BKT parameters, item calibration and the next-item policy."""

from __future__ import annotations

from typing import Any

from django.db import migrations

NAME = "learners: nightly refit"


def forwards(apps: Any, schema_editor: Any) -> None:
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(
        name=NAME,
        defaults={"func": "learners.tasks.fit_all_courses", "schedule_type": "D", "repeats": -1},
    )


def backwards(apps: Any, schema_editor: Any) -> None:
    apps.get_model("django_q", "Schedule").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("learners", "0002_skill_bkt_proxy"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
