"""Fit BKT per skill on one answer file and score another one step ahead.

    python manage.py kt_evaluate --train FILE --test FILE --format dkt|csv [--forgets] \
        --predictions OUT.csv

Writes one prediction per test answer, in file order (columns student, skill, index,
correct, p), and prints one JSON line: fit seconds, AUC, RMSE and counts. Only the pure
modules `learners.bkt` and `learners.kt_data` are used: no database.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from learners import bkt, kt_data


class Command(BaseCommand):
    help = "Fit BKT per skill on --train, score --test one step ahead; print one JSON line."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--train", required=True, help="answers to fit on")
        parser.add_argument("--test", required=True, help="answers to predict, in order")
        parser.add_argument("--format", required=True, choices=kt_data.FORMATS)
        parser.add_argument("--forgets", action="store_true", help="fit p(F) too")
        parser.add_argument("--predictions", required=True, help="CSV file to write")
        parser.add_argument("--restarts", type=int, default=bkt.DEFAULT_RESTARTS)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument(
            "--tol", type=float, default=bkt.DEFAULT_TOL, help="EM log-likelihood tolerance"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["restarts"] < 1:
            raise CommandError("--restarts must be at least 1")
        if not options["tol"] > 0:
            raise CommandError("--tol must be positive")
        try:
            train = kt_data.read_responses(options["train"], options["format"])
            test = kt_data.read_responses(options["test"], options["format"])
        except (OSError, kt_data.DataFormatError) as exc:
            raise CommandError(str(exc)) from exc
        if len(train) == 0:
            raise CommandError(f"{options['train']}: no answers to fit on")
        result = kt_data.evaluate(
            train,
            test,
            forgets=options["forgets"],
            restarts=options["restarts"],
            seed=options["seed"],
            tol=options["tol"],
        )
        try:
            kt_data.write_predictions(options["predictions"], test, result.predictions)
        except OSError as exc:
            raise CommandError(f"cannot write {options['predictions']}: {exc}") from exc
        summary = {
            "format": options["format"],
            "forgets": options["forgets"],
            "restarts": options["restarts"],
            "seed": options["seed"],
            **result.summary(),
            "predictions": options["predictions"],
        }
        self.stdout.write(json.dumps(summary))
