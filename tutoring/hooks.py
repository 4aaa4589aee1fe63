"""What the inference worker calls back into the app: saving answers and checking for a stop.

Configured by TUTOR_INFERENCE_ON_FINISH and TUTOR_INFERENCE_IS_CANCELLED (dotted paths), so the
worker itself knows nothing of the models.
"""

from __future__ import annotations

import logging
from typing import Any

from django.utils import timezone

from knowledge import sentences
from tutoring import support
from tutoring.models import Message

logger = logging.getLogger(__name__)


def save_answer(finished: Any) -> None:
    """Store a finished generation on its assistant message (found by request id)."""
    updated = Message.objects.filter(request_id=finished.request_id).update(
        content=finished.text,
        support=list(getattr(finished, "support", [])),
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


def judge_sentences(
    passages: list[dict[str, Any]], said: list[str], question: str = ""
) -> list[dict[str, Any]]:
    """The support check of an answer's sentences against the passages it was written from
    (their stored sentence vectors; only the new sentences are embedded) and the question."""
    chunk_ids = [p["chunk"] for p in passages if isinstance(p.get("chunk"), int)]
    embed = sentences.embedder(sentences.stored(chunk_ids))
    judged = support.check_sentences(said, [p["text"] for p in passages], embed, question)
    return [
        {
            "sentence": mark.sentence,
            "supported": mark.supported,
            "score": mark.score,
            "missing_figures": mark.missing_figures,
            "negation_flipped": mark.negation_flipped,
            "opposed": mark.opposed,
            "overstated": mark.overstated,
            "closest": mark.closest,
        }
        for mark in judged
    ]


def is_cancelled(request_id: str, message_id: int | None = None) -> bool:
    return Message.objects.filter(request_id=request_id, cancel_requested=True).exists()
