"""The question's path (DESIGN.md, "How a question flows"): save the question, retrieve, pitch
by mastery, build the prompt, and hand it to an inference worker over the channel layer."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from knowledge import retrieval
from knowledge.models import Course, Skill
from learners.models import Mode, mode_for
from learners.services import mastery_of
from tutoring import llm, prompts
from tutoring.inference import INFERENCE_CHANNEL
from tutoring.models import Conversation, Message

if TYPE_CHECKING:
    from django.contrib.auth.models import User

logger = logging.getLogger(__name__)

PASSAGES = 4
MAX_QUESTION_CHARS = 2000


class TutoringError(Exception):
    """A question the tutor refuses; the message is shown to the learner."""


@dataclass(frozen=True)
class Pitch:
    mode: str
    reason: str
    masteries: dict[str, float]
    unmet_prerequisites: list[str]


@dataclass(frozen=True)
class Asked:
    question: Message
    answer: Message
    created: bool  # False when the client id had been seen: nothing new was asked


def start_conversation(
    *, learner: User, course: Course, focus_skill: Skill | None = None
) -> Conversation:
    if not course.has_member(learner):
        raise TutoringError("you are not a member of this course")
    return Conversation.objects.create(learner=learner, course=course, focus_skill=focus_skill)


def pitch(
    *, learner: User, course: Course, hits: list[retrieval.Hit], focus: Skill | None
) -> Pitch:
    """The mode from the mastery of the skills the retrieved passages teach (the weakest wins)."""
    names = {name for hit in hits[:2] for name in hit.skills}
    skills = list(Skill.objects.filter(course=course, name__in=names))
    if focus is not None and focus not in skills:
        skills.append(focus)
    masteries = {skill.name: mastery_of(learner, skill) for skill in skills}
    if not masteries:
        return Pitch(Mode.SCAFFOLDED, prompts.mode_explanation(Mode.SCAFFOLDED, {}), {}, [])
    weakest = min(masteries.values())
    mode = mode_for(weakest, course)
    unmet = sorted({p.name for skill in skills for p in skill.prerequisites_unmet(learner)})
    return Pitch(mode, prompts.mode_explanation(mode, masteries), masteries, unmet)


def ask(*, conversation: Conversation, question: str, client_id: str = "") -> Asked:
    """Save the question (idempotent on client id) and queue the answer's generation."""
    question = question.strip()
    if not question:
        raise TutoringError("the question is empty")
    if len(question) > MAX_QUESTION_CHARS:
        raise TutoringError(f"the question is longer than {MAX_QUESTION_CHARS} characters")
    if client_id:
        earlier = conversation.messages.filter(client_id=client_id, role=Message.Role.USER).first()
        if earlier is not None:
            answer = conversation.messages.filter(
                role=Message.Role.ASSISTANT, id__gt=earlier.pk
            ).first()
            if answer is not None:
                return Asked(earlier, answer, created=False)
    learner = conversation.learner
    course = conversation.course
    hits = retrieval.search(course, question, PASSAGES)
    chosen = pitch(learner=learner, course=course, hits=hits, focus=conversation.focus_skill)
    history = [
        (message.role, message.content)
        for message in conversation.messages.filter(
            status__in=[Message.Status.COMPLETE, Message.Status.LENGTH]
        ).order_by("-id")[:12][::-1]
    ]
    built = prompts.build_messages(
        question=question,
        passages=prompts.passages_from_hits(hits),
        history=history,
        mode=chosen.mode,
        course_title=course.title,
        unmet_prerequisites=chosen.unmet_prerequisites,
        count_tokens=_token_counter(),
        context_tokens=settings.TUTOR_LLM_CONTEXT,
        reserve_for_answer=settings.TUTOR_ANSWER_TOKENS,
    )
    # Only the passages that fit the prompt can be cited; their numbers are kept.
    kept = {passage.number for passage in built.passages}
    citations = [
        {
            "n": number,
            "chunk": hit.chunk_id,
            "document": hit.document,
            "filename": hit.filename,
            "locator": hit.locator,
            "text": hit.text,
        }
        for number, hit in enumerate(hits, start=1)
        if number in kept
    ]
    try:
        with transaction.atomic():
            if conversation.messages.filter(
                role=Message.Role.ASSISTANT,
                status__in=[Message.Status.PENDING, Message.Status.STREAMING],
            ).exists():
                raise TutoringError("the tutor is still answering your last question")
            user_message = Message.objects.create(
                conversation=conversation,
                role=Message.Role.USER,
                content=question,
                client_id=client_id,
            )
            answer = Message.objects.create(
                conversation=conversation,
                role=Message.Role.ASSISTANT,
                status=Message.Status.PENDING,
                mode=chosen.mode,
                mode_reason=chosen.reason[:300],
                citations=citations,
                prompt_tokens=built.prompt_tokens,
            )
            if not conversation.title:
                conversation.title = question[:200]
            conversation.save(update_fields=["title", "updated_at"])
            request = {
                "type": "generate",
                "request_id": str(answer.request_id),
                "message_id": answer.pk,
                "group": conversation.group_name(),
                "messages": built.messages,
                "max_tokens": settings.TUTOR_ANSWER_TOKENS,
                "temperature": settings.TUTOR_LLM_TEMPERATURE,
                "time_limit": settings.TUTOR_ANSWER_SECONDS,
                "reply_channel": None,
            }
            transaction.on_commit(lambda: send_to_worker(request))
    except IntegrityError:
        # race: the same client id from a second tab won; answer with its question.
        earlier = conversation.messages.get(client_id=client_id, role=Message.Role.USER)
        later = conversation.messages.filter(role=Message.Role.ASSISTANT, id__gt=earlier.pk).first()
        if later is None:
            raise
        return Asked(earlier, later, created=False)
    return Asked(user_message, answer, created=True)


def send_to_worker(request: dict[str, Any]) -> None:
    layer = get_channel_layer()
    assert layer is not None
    async_to_sync(layer.send)(INFERENCE_CHANNEL, request)


def request_stop(*, conversation: Conversation) -> int:
    """Ask the worker to stop the answer in flight (it checks this flag several times a second)."""
    return conversation.messages.filter(
        role=Message.Role.ASSISTANT, status__in=[Message.Status.PENDING, Message.Status.STREAMING]
    ).update(cancel_requested=True)


def fail_if_unfinished(*, message_id: int, reason: str) -> bool:
    """Mark an answer failed when no worker finished it (a dead worker): True if it was open."""
    return bool(
        Message.objects.filter(
            pk=message_id, status__in=[Message.Status.PENDING, Message.Status.STREAMING]
        ).update(status=Message.Status.ERROR, error=reason, finished_at=timezone.now())
    )


def _token_counter() -> prompts.TokenCounter:
    path = llm.model_path()
    if path is None:
        raise TutoringError("no language model is installed")
    return prompts.gguf_token_counter(str(path))
