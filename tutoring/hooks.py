"""What the inference worker calls back into the app: saving answers and checking for a stop.

Configured by TUTOR_INFERENCE_ON_FINISH and TUTOR_INFERENCE_IS_CANCELLED (dotted paths), so the
worker itself knows nothing of the models.
"""

from __future__ import annotations

import logging
from typing import Any

from django.utils import timezone

from tutoring.models import Message

logger = logging.getLogger(__name__)


def save_answer(finished: Any) -> None:
    """Store a finished generation on its assistant message (found by request id)."""
    updated = Message.objects.filter(request_id=finished.request_id).update(
        content=finished.text,
        status=finished.status,
        error=finished.error or "",
        prompt_tokens=finished.prompt_tokens,
        completion_tokens=finished.completion_tokens,
        ttft_ms=finished.ttft_ms,
        total_ms=finished.total_ms,
        finished_at=timezone.now(),
    )
    if not updated:
        logger.info("finished request %s has no message to save to", finished.request_id)


def is_cancelled(request_id: str, message_id: int | None = None) -> bool:
    return Message.objects.filter(request_id=request_id, cancel_requested=True).exists()
