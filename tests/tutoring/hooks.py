"""Hooks a test's inference worker calls (TUTOR_INFERENCE_ON_FINISH, _IS_CANCELLED): they talk
to the test through folders named by environment variables, one file per request."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

SAFE_ID = re.compile(r"^[\w-]{1,100}$")


def record(finished: Any) -> None:
    """Write the Finished as JSON to $TUTOR_TEST_FINISHED_DIR/<request id>.json."""
    if not SAFE_ID.match(finished.request_id):
        return
    folder = Path(os.environ["TUTOR_TEST_FINISHED_DIR"])
    partial = folder / f".{finished.request_id}.partial"
    partial.write_text(json.dumps(asdict(finished)))
    partial.rename(folder / f"{finished.request_id}.json")  # whole or not at all


def cancel_flagged(request_id: str, message_id: int | None) -> bool:
    """True once the test has created $TUTOR_TEST_CANCEL_DIR/<request id>, like a DB flag."""
    return (
        bool(SAFE_ID.match(request_id))
        and (Path(os.environ["TUTOR_TEST_CANCEL_DIR"]) / request_id).exists()
    )
