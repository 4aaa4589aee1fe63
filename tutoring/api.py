"""The tutor's API for scripts: ask a question and get the grounded answer as JSON.

    POST /api/courses/<slug>/ask/   {"question": "...", "conversation": id?, "client_id": "..."?}

waits for the answer (saved by an inference worker) and returns it with its mode and why, its
citations and its timings. Without `conversation`, a new one is started; pass the returned id to
go on with the same history. A repeated `client_id` in a conversation returns the first answer.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from django.conf import settings
from django.contrib.auth.models import User
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response

from knowledge.access import get_course_for_member
from knowledge.api import refuse
from tutoring import services
from tutoring.models import Conversation, Message

logger = logging.getLogger(__name__)


def answer_json(conversation: Conversation, question: Message, answer: Message) -> dict[str, Any]:
    generated_ms = (answer.total_ms or 0.0) - (answer.ttft_ms or 0.0)
    return {
        "conversation": conversation.pk,
        "question": {"id": question.pk, "text": question.content},
        # "From your course material": verbatim passage sentences, before the model's words.
        "extract": answer.extract,
        "answer": answer.content,
        # False: no passage came close enough; `answer` says so and `citations` are the
        # closest sections. The model wrote nothing.
        "covered": answer.covered,
        # Each sentence of the model's answer, checked against the passages.
        "support": answer.support,
        "not_found": [mark["sentence"] for mark in answer.support if not mark.get("supported")],
        "status": answer.status,
        "error": answer.error or None,
        "mode": answer.mode,
        "mode_reason": answer.mode_reason,
        "citations": answer.citations,
        "timings": {
            "ttft_ms": answer.ttft_ms,
            "total_ms": answer.total_ms,
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "tokens_per_second": (
                round(answer.completion_tokens / generated_ms * 1000, 1)
                if generated_ms > 0
                else None
            ),
        },
    }


@api_view(["POST"])
def ask(request: Request, slug: str) -> Response:
    user = cast(User, request.user)
    course = get_course_for_member(user, slug)
    data = request.data if isinstance(request.data, dict) else {}
    question = data.get("question")
    if not isinstance(question, str) or not question.strip():
        return refuse("send the question as a non-empty string in `question`", 400)
    client_id = data.get("client_id", "")
    if not isinstance(client_id, str) or len(client_id) > 64:
        return refuse("client_id must be a string of at most 64 characters", 400)
    raw_conversation = data.get("conversation")
    if raw_conversation is None:
        conversation = services.start_conversation(learner=user, course=course)
    else:
        if isinstance(raw_conversation, bool) or not isinstance(raw_conversation, int):
            return refuse("conversation must be the id of one of your conversations", 400)
        found = Conversation.objects.filter(
            pk=raw_conversation, learner=user, course=course
        ).first()
        if found is None:
            return refuse(f"you have no conversation {raw_conversation} in this course", 404)
        conversation = found
    if not services.allow_question(user.pk):
        return refuse("too many questions; wait a minute and ask again", 429)
    try:
        asked = services.ask(conversation=conversation, question=question, client_id=client_id)
    except services.TutoringError as exc:
        return refuse(str(exc), 409 if "still answering" in str(exc) else 400)
    timeout = settings.TUTOR_ANSWER_SECONDS + settings.TUTOR_WORKER_SILENCE_SECONDS
    answer = services.wait_for_answer(asked.answer, timeout)
    body = answer_json(conversation, asked.question, answer)
    if answer.status == Message.Status.ERROR:
        logger.error("API answer %s failed: %s", answer.pk, answer.error)
        return Response({**body, "error": answer.error}, status=503)
    return Response(body)
