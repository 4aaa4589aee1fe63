"""The question's path (DESIGN.md, "How a question flows"): save the question, retrieve, pitch
by mastery, build the prompt, and hand it to an inference worker over the channel layer."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from knowledge import retrieval, sentences
from knowledge.models import Chunk, Course, Skill
from learners.models import Attempt, Item, Mode, mode_for
from learners.services import add_generated_item, mastery_of, next_item, record_attempt
from tutoring import checks, llm, prompts, support
from tutoring.inference import INFERENCE_CHANNEL
from tutoring.models import Check, Conversation, Message, UncoveredQuestion

if TYPE_CHECKING:
    from django.contrib.auth.models import User

logger = logging.getLogger(__name__)

PASSAGES = 4
MAX_QUESTION_CHARS = 2000
# Words by which a question points back at the one before it ("Why is that?", "And if it runs
# dry?", "What about the second step?").
_POINTS_BACK = re.compile(
    r"\b(?:it|its|that|this|these|those|they|them|their|there|then|same|else|also)\b|"
    r"^\W*(?:and|but|so|or|what about|how about)\b",
    re.IGNORECASE,
)


def follows_on(question: str) -> bool:
    """Whether a question reads as a follow-up of the one before: it points back at it, or says
    almost nothing of its own. "What is the capital of France?" does neither: it is judged
    alone, however the conversation started."""
    return bool(_POINTS_BACK.search(question)) or len(checks.content_words(question)) <= 1


class TutoringError(Exception):
    """A question the tutor refuses; the message is shown to the learner."""


@dataclass(frozen=True)
class Pitch:
    mode: str
    reason: str
    masteries: dict[str, float]
    unmet_prerequisites: list[str]
    # The skill the answer teaches: the focus, else the weakest skill of the best passage.
    skill: Skill | None = None


@dataclass(frozen=True)
class Asked:
    question: Message
    answer: Message
    created: bool  # False when the client id had been seen: nothing new was asked


def message_json(message: Message) -> dict[str, Any]:
    return {
        "id": message.pk,
        "role": message.role,
        "content": message.content,
        "status": message.status,
        "error": message.error,
        "mode": message.mode,
        "mode_reason": message.mode_reason,
        "citations": message.citations,
        "extract": message.extract,
        "support": message.support,
        "not_found": [mark["sentence"] for mark in message.support if not mark.get("supported")],
        "covered": message.covered,
        "skill_id": message.skill_id,
        "client_id": message.client_id,
        "ttft_ms": message.ttft_ms,
        "total_ms": message.total_ms,
    }


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
    taught = focus
    if taught is None and hits:
        best = [skill for skill in skills if skill.name in hits[0].skills]
        taught = min(best, key=lambda skill: (masteries[skill.name], skill.name), default=None)
    return Pitch(mode, prompts.mode_explanation(mode, masteries), masteries, unmet, taught)


@dataclass(frozen=True)
class Composed:
    """What the model is asked: the retrieved passages, the pitch and the prompt."""

    hits: list[retrieval.Hit]
    pitch: Pitch
    built: prompts.BuiltPrompt
    # The passages that fit the prompt (only those can be cited), with their numbers.
    citations: list[dict[str, Any]]


def closeness(hits: list[retrieval.Hit]) -> float:
    """How close the best passage came to the question (cosine similarity; 0 if none)."""
    return max((hit.similarity or 0.0 for hit in hits), default=0.0)


def _citation(number: int, hit: retrieval.Hit) -> dict[str, Any]:
    return {
        "n": number,
        "chunk": hit.chunk_id,
        "document": hit.document,
        "filename": hit.filename,
        "locator": hit.locator,
        "text": hit.text,
    }


def compose(
    *,
    course: Course,
    learner: User,
    question: str,
    focus: Skill | None = None,
    history: list[tuple[str, str]] | None = None,
    hits: list[retrieval.Hit] | None = None,
) -> Composed:
    """Retrieve (unless `hits` are given), pitch by mastery and build the prompt: the chat's, the
    API's and `manage.py llm_check`'s prompts are all made here."""
    if hits is None:
        hits = retrieval.search(course, question, PASSAGES)
    chosen = pitch(learner=learner, course=course, hits=hits, focus=focus)
    built = prompts.build_messages(
        question=question,
        passages=prompts.passages_from_hits(hits),
        history=history or [],
        mode=chosen.mode,
        course_title=course.title,
        unmet_prerequisites=chosen.unmet_prerequisites,
        count_tokens=_token_counter(),
        # The prompt's own budget: on a CPU the model reads a prompt at some 100-300 tokens a
        # second, so a long one delays the first word by seconds (TUTOR_PROMPT_TOKENS).
        context_tokens=min(
            settings.TUTOR_LLM_CONTEXT, settings.TUTOR_PROMPT_TOKENS + settings.TUTOR_ANSWER_TOKENS
        ),
        reserve_for_answer=settings.TUTOR_ANSWER_TOKENS,
    )
    kept = {passage.number for passage in built.passages}
    citations = [
        _citation(number, hit) for number, hit in enumerate(hits, start=1) if number in kept
    ]
    return Composed(hits, chosen, built, citations)


NOT_COVERED = (
    "Your course material doesn't cover this question, so the tutor won't guess an answer. "
    "The closest sections are below; your instructors see the questions their material "
    "doesn't cover, so they can add to it."
)
CLOSEST_SECTIONS = 3


def normalised(question: str) -> str:
    return " ".join(question.casefold().split())[:500]


def _save_turn(
    conversation: Conversation, question: str, client_id: str, **answer: Any
) -> tuple[Message, Message]:
    """Save the question and its answer's row (call in a transaction); refused while another
    answer of the conversation is in flight."""
    if conversation.messages.filter(
        role=Message.Role.ASSISTANT,
        status__in=[Message.Status.PENDING, Message.Status.STREAMING],
    ).exists():
        raise TutoringError("the tutor is still answering your last question")
    user_message = Message.objects.create(
        conversation=conversation, role=Message.Role.USER, content=question, client_id=client_id
    )
    answer_message = Message.objects.create(
        conversation=conversation, role=Message.Role.ASSISTANT, **answer
    )
    if not conversation.title:
        conversation.title = question[:200]
    conversation.save(update_fields=["title", "updated_at"])
    return user_message, answer_message


def _not_covered(
    conversation: Conversation,
    question: str,
    client_id: str,
    hits: list[retrieval.Hit],
    chosen: Pitch,
) -> tuple[Message, Message]:
    """No passage is close enough: say so, offer the closest sections, and report the question
    to the instructors; the model writes nothing. Call in a transaction."""
    course = conversation.course
    near = closeness(hits)
    user_message, answer = _save_turn(
        conversation,
        question,
        client_id,
        status=Message.Status.COMPLETE,
        content=NOT_COVERED,
        covered=False,
        mode=chosen.mode,
        mode_reason="not covered by your course material",
        citations=[
            _citation(number, hit) for number, hit in enumerate(hits[:CLOSEST_SECTIONS], start=1)
        ],
        finished_at=timezone.now(),
    )
    best = hits[0] if hits else None
    where = ""
    if best is not None:
        where = best.filename or best.document
        where = f"{where}, {best.locator}" if best.locator else where
    report, created = UncoveredQuestion.objects.select_for_update().get_or_create(
        course=course,
        normalised=normalised(question),
        defaults={
            "question": question,
            "closest": where[:500],
            "closest_chunk_id": best.chunk_id if best else None,
            "closeness": round(near, 4),
        },
    )
    if not created:
        UncoveredQuestion.objects.filter(pk=report.pk).update(
            times_asked=F("times_asked") + 1, last_asked_at=timezone.now()
        )
    logger.info(
        "course %s: question not covered (closest %.2f < %.2f): %r",
        course.slug,
        near,
        course.covered_from,
        question[:80],
    )
    return user_message, answer


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
    course = conversation.course
    history = [
        (message.role, message.content)
        for message in conversation.messages.filter(
            status__in=[Message.Status.COMPLETE, Message.Status.LENGTH]
        ).order_by("-id")[:12][::-1]
    ]
    hits = retrieval.search(course, question, PASSAGES)
    previous = next((text for role, text in reversed(history) if role == Message.Role.USER), "")
    if closeness(hits) < course.covered_from and previous and follows_on(question):
        # A follow-up ("why is that?") is about the question before it.
        hits = retrieval.search(course, f"{previous}\n{question}", PASSAGES)
    covered = closeness(hits) >= course.covered_from
    composed = None
    if covered:
        composed = compose(
            course=course,
            learner=conversation.learner,
            question=question,
            focus=conversation.focus_skill,
            history=history,
            hits=hits,
        )
    try:
        with transaction.atomic():
            if composed is None:
                chosen = pitch(
                    learner=conversation.learner,
                    course=course,
                    hits=hits,
                    focus=conversation.focus_skill,
                )
                user_message, answer = _not_covered(conversation, question, client_id, hits, chosen)
                return Asked(user_message, answer, created=True)
            chosen, built, citations = composed.pitch, composed.built, composed.citations
            user_message, answer = _save_turn(
                conversation,
                question,
                client_id,
                status=Message.Status.PENDING,
                mode=chosen.mode,
                skill=chosen.skill,
                mode_reason=chosen.reason[:300],
                citations=citations,
                prompt_tokens=built.prompt_tokens,
            )
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
                # What the worker checks each sentence against, as it streams.
                "passages": [{"text": c["text"], "chunk": c["chunk"]} for c in citations],
                "question": question,
            }
            transaction.on_commit(lambda: send_to_worker(request))
    except IntegrityError:
        # race: the same client id from a second tab won; answer with its question.
        earlier = conversation.messages.get(client_id=client_id, role=Message.Role.USER)
        later = conversation.messages.filter(role=Message.Role.ASSISTANT, id__gt=earlier.pk).first()
        if later is None:
            raise
        return Asked(earlier, later, created=False)
    # The request is with a worker now (sent on commit): the quotes are found while the model
    # reads its prompt, not before it gets it.
    answer.extract = support.extract(
        question,
        [(citation["n"], citation["text"]) for citation in citations],
        # The passages' sentence vectors are stored; the question's was cached by retrieval.
        sentences.embedder(sentences.stored(citation["chunk"] for citation in citations)),
    )
    Message.objects.filter(pk=answer.pk).update(extract=answer.extract)
    return Asked(user_message, answer, created=True)


def allow_question(learner_id: int) -> bool:
    """A per-learner rate limit on questions (a fixed one-minute window), shared by the chat
    and the API."""
    key = f"tutor:ask-rate:{learner_id}:{int(time.time() // 60)}"
    cache.add(key, 0, timeout=120)
    try:
        count = cache.incr(key)
    except ValueError:
        count = 1
    return count <= settings.TUTOR_QUESTIONS_PER_MINUTE


def wait_for_answer(answer: Message, timeout: float, poll: float = 0.1) -> Message:
    """The answer once a worker has saved it; marked failed when none did within `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        answer.refresh_from_db()
        if answer.is_finished():
            return answer
        if time.monotonic() >= deadline:
            fail_if_unfinished(
                message_id=answer.pk,
                reason="the tutor's language model did not answer in time; please ask again",
            )
            answer.refresh_from_db()
            return answer
        time.sleep(poll)


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


# ---------------------------------------------------------------- check questions


def offer_check(*, answer: Message) -> Check | None:
    """The check question after this answer (the same one for every tab), or None.

    None when the answer did not finish well or teaches no skill, or when the skill has no
    approved item and none can be made from the passage it cited.
    """
    existing = Check.objects.select_related("item__skill").filter(after=answer).first()
    if existing is not None:
        return existing
    if answer.role != Message.Role.ASSISTANT or answer.status not in (
        Message.Status.COMPLETE,
        Message.Status.LENGTH,
    ):
        return None
    if answer.skill_id is None:
        return None
    skill = answer.skill
    assert skill is not None
    learner = answer.conversation.learner
    item = next_item(learner=learner, skill=skill) or _generated_item(
        skill=skill, citations=answer.citations
    )
    if item is None:
        return None
    with transaction.atomic():
        check, _ = Check.objects.get_or_create(
            after=answer, defaults={"conversation": answer.conversation, "item": item}
        )
    return Check.objects.select_related("item__skill").get(pk=check.pk)


def _generated_item(*, skill: Skill, citations: list[dict[str, Any]]) -> Item | None:
    """A draft completion item from the first cited passage that yields one (reused if made)."""
    for citation in citations:
        chunk_id = citation.get("chunk")
        if not isinstance(chunk_id, int):
            continue
        chunk = Chunk.objects.filter(pk=chunk_id).first()
        if chunk is None:
            continue
        made = checks.make_completion(chunk.text, _course_terms(skill, chunk.pk))
        if made is None:
            continue
        sentence, term, distractors = made
        where = citation.get("filename") or citation.get("document") or "the course material"
        if citation.get("locator"):
            where = f"{where}, {citation['locator']}"
        stem = f"Complete the sentence from your course material ({where}):\n\n“{sentence}”"
        choices = checks.shuffled([term, *distractors], key=sentence)
        return add_generated_item(skill=skill, stem=stem, choices=choices, answer=term)
    return None


def _course_terms(skill: Skill, exclude_chunk: int) -> list[str]:
    """Candidate distractors: quantities and long content words of the skill's other passages
    (the course's, when the skill has few)."""
    chunks = list(
        Chunk.objects.filter(skills=skill)
        .exclude(pk=exclude_chunk)
        .values_list("text", flat=True)[:40]
    )
    if len(chunks) < 3:
        chunks += list(
            Chunk.objects.filter(document__course_id=skill.course_id)
            .exclude(pk=exclude_chunk)
            .values_list("text", flat=True)[:40]
        )
    return [term for text in chunks for term in checks.terms_of(text)]


def start_check_response(*, check: Check, learner: User, response: str) -> Check:
    """Take the learner's response: the check moves from offered to grading exactly once."""
    response = response.strip()
    if check.conversation.learner_id != learner.pk:
        raise checks.CheckError("this check question belongs to another learner")
    if check.status != Check.Status.OFFERED:
        raise checks.CheckError("this check question has been answered already")
    if not response:
        raise checks.CheckError("write an answer first")
    if len(response) > checks.MAX_RESPONSE_CHARS:
        raise checks.CheckError(f"the answer is longer than {checks.MAX_RESPONSE_CHARS} characters")
    if check.item.kind == Item.Kind.MULTIPLE_CHOICE:
        checks.grade_choice(check.item, response)  # refuses a response that is not a choice
    taken = Check.objects.filter(pk=check.pk, status=Check.Status.OFFERED).update(
        status=Check.Status.GRADING, response=response
    )
    if not taken:
        raise checks.CheckError("this check question has been answered already")
    return Check.objects.select_related("item__skill", "conversation__learner").get(pk=check.pk)


def settle_short_answer(check: Check) -> tuple[checks.Grade | None, float]:
    """The bounds' verdict on a short answer (None: the model decides) and the similarity of the
    response to the expected answer (the local embedding model)."""
    from knowledge import embedding

    vectors = embedding.embed([check.item.answer, check.response])  # unit length
    similarity = float(vectors[0] @ vectors[1])
    return checks.settle(check.item.answer, check.response, similarity), similarity


def finish_check(*, check: Check, grade: checks.Grade) -> Check:
    """Record the graded response in the learner model and on the check (idempotent)."""
    if check.status == Check.Status.GRADED:
        return check
    item = check.item
    result = record_attempt(
        learner=check.conversation.learner,
        skill=item.skill,
        correct=grade.correct,
        source=Attempt.Source.CHAT,
        key=f"check:{check.pk}",
        item=item,
    )
    Check.objects.filter(pk=check.pk).exclude(status=Check.Status.GRADED).update(
        extract=feedback_extract(item),
        status=Check.Status.GRADED,
        correct=grade.correct,
        reason=grade.reason[:300],
        graded_by=grade.by,
        p_before=result.attempt.p_before,
        p_after=result.p_known,
        graded_at=timezone.now(),
    )
    check = Check.objects.select_related("item__skill", "conversation__learner").get(pk=check.pk)
    logger.info(
        "check %s graded %s by %s: p(L) %.3f -> %.3f",
        check.pk,
        "right" if grade.correct else "wrong",
        grade.by,
        check.p_before or 0.0,
        check.p_after or 0.0,
    )
    return check


FEEDBACK_PASSAGES = 3


def feedback_extract(item: Item) -> list[dict[str, Any]]:
    """The feedback on a graded check question: the course's sentences that hold its answer,
    verbatim, with where they are (document, page or section)."""
    question = f"{item.stem} {item.answer}".strip()
    try:
        hits = retrieval.search(item.skill.course_id, question, FEEDBACK_PASSAGES)
        known = sentences.stored(hit.chunk_id for hit in hits)
        quoted = support.extract(
            question,
            [(number, hit.text) for number, hit in enumerate(hits, start=1)],
            sentences.embedder(known),
            k=2,
        )
    except Exception:  # feedback is a bonus: the grade stands without it
        logger.exception("no feedback extract for item %s", item.pk)
        return []
    found = []
    for quote in quoted:
        hit = hits[quote["n"] - 1]
        found.append(
            {
                **quote,
                "chunk": hit.chunk_id,
                "document": hit.document,
                "filename": hit.filename,
                "locator": hit.locator,
            }
        )
    return found


def check_json(check: Check) -> dict[str, Any]:
    item = check.item
    graded = check.status == Check.Status.GRADED
    learner = check.conversation.learner
    return {
        "id": check.pk,
        "after": check.after_id,
        "status": check.status,
        "stem": item.stem,
        "kind": item.kind,
        "choices": item.choices,
        "skill": item.skill.name,
        "skill_id": item.skill_id,
        "generated": item.source == Item.Source.GENERATED,
        "response": check.response,
        "correct": check.correct,
        "reason": check.reason,
        "graded_by": check.graded_by,
        # The expected answer only once graded.
        "answer": item.answer if graded else None,
        "extract": check.extract if graded else [],
        "p_before": check.p_before,
        "p_after": check.p_after,
        "mastery": round(
            check.p_after
            if graded and check.p_after is not None
            else mastery_of(learner, item.skill),
            4,
        ),
    }
