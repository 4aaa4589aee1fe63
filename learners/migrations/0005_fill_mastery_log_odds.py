"""Mastery rows written before log-odds existed: derive them from p(L)."""

from __future__ import annotations

import math
from typing import Any

from django.db import migrations


def forwards(apps: Any, schema_editor: Any) -> None:
    Mastery = apps.get_model("learners", "Mastery")
    for row in Mastery.objects.all().only("pk", "p_known").iterator():
        p = min(max(row.p_known, 0.0), 1.0)
        odds = math.inf if p >= 1.0 else (-math.inf if p <= 0.0 else math.log(p / (1.0 - p)))
        Mastery.objects.filter(pk=row.pk).update(log_odds=odds)


class Migration(migrations.Migration):
    dependencies = [("learners", "0004_mastery_log_odds")]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
